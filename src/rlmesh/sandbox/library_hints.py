"""What a sandbox lacks, from an env error: a shared library, or a Python package.

A pip package cannot provide ``libGL.so.1``: the sandbox needs ``system_packages=["libgl1"]``.
A ``gymnasium.error.DependencyNotInstalled`` ("pygame is not installed") raised in a sandbox
means the package is missing *in the sandbox*, whatever the host has: the sandbox installs only
what ``packages=`` names. A sandbox adds the notes this module writes to the env errors it
raises (:func:`add_sandbox_notes`): to those its env raises while it runs, and to the
:class:`~rlmesh.errors.SandboxStartError` of an env that could not be made.
"""

from __future__ import annotations

import re

from ..errors import RemoteEnvError

__all__ = ["add_sandbox_notes", "missing_dependency_note", "missing_library_note"]


# The env's message and traceback are hostile input (up to 64 KiB and 256 KiB): they are searched
# for literals first and a pattern only ever runs on a bounded token, so the cost stays linear.
_CANNOT_OPEN = ": cannot open shared object file"
_SONAME = re.compile(r"[^\s'\"]{1,200}?\.so(?:\.\d{1,9}){0,4}")
_OTHER_MISSING = re.compile(
    r"OpenGL platform library has not been loaded|[Cc]ould not (?:find|load) (?:the )?(?:library|OSMesa|EGL)"
)
# Debian (bookworm) packages for the shared libraries env packages most often miss, by soname
# stem, and for PyOpenGL's platforms (MuJoCo picks one from MUJOCO_GL).
_DEBIAN_PACKAGE = {
    "libGL": "libgl1", "libEGL": "libegl1", "libOSMesa": "libosmesa6", "libGLU": "libglu1-mesa",
    "libglib-2.0": "libglib2.0-0", "libgthread-2.0": "libglib2.0-0", "libSM": "libsm6", "libICE": "libice6",
    "libXext": "libxext6", "libXrender": "libxrender1", "libX11": "libx11-6", "libgomp": "libgomp1",
    "libsndfile": "libsndfile1", "libSDL2-2.0": "libsdl2-2.0-0",
}
_PYOPENGL_PLATFORM = re.compile(r"[/\\](osmesa|egl|glx)[/\\]__init__\.py|OpenGL[/\\]platform[/\\](osmesa|egl|glx)\.py")
_PLATFORM_PACKAGE = {"osmesa": "libosmesa6", "egl": "libegl1", "glx": "libgl1"}


def missing_library_note(message: str, traceback_tail: str) -> str | None:
    """A note for an env error caused by a shared library missing where the env runs: which
    Debian package to add to ``system_packages`` when it is a well-known one."""
    soname = _missing_soname(message) or _missing_soname(traceback_tail)
    missing = soname is not None or any(_OTHER_MISSING.search(text) for text in (message, traceback_tail))
    pyopengl = "OpenGL" in traceback_tail and "'NoneType' object has no attribute 'gl" in message
    if not (missing or pyopengl):
        return None
    package = _DEBIAN_PACKAGE.get(soname.split(".so")[0].rsplit("/", 1)[-1]) if soname else None
    platform = _PYOPENGL_PLATFORM.search(traceback_tail) if package is None else None
    if platform:
        package = _PLATFORM_PACKAGE[platform.group(1) or platform.group(2)]
        soname = f"PyOpenGL's {platform.group(1) or platform.group(2)} platform"
    what = f" ({soname})" if soname else ""
    fix = (f'add system_packages=["{package}"]' if package else
           "add the Debian package that does to system_packages=[...] "
           "(find it with `apt-file search` or on packages.debian.org)")
    return (f"A shared library{what} is missing where the env runs. A pip package cannot provide it: "
            f"in a sandbox, {fix}.")


def _missing_soname(text: str) -> str | None:
    """``libGL.so.1`` from "...: libGL.so.1: cannot open shared object file ..." (None if absent)."""
    at = -1
    for _ in range(8):  # a few occurrences, each looked at in bounded time
        at = text.find(_CANNOT_OPEN, at + 1)
        if at < 0:
            return None
        words = text[max(0, at - 256):at].split()
        token = words[-1].lstrip("'\"([{,") if words else ""  # PyOpenGL quotes it in a tuple's repr
        if _SONAME.fullmatch(token):
            return token
    return None


# The packages= entry that provides what Gymnasium's DependencyNotInstalled messages name.
_GYMNASIUM_EXTRA = (
    ("pygame", "gymnasium[classic-control]"), ("box2d", "gymnasium[box2d]"), ("swig", "gymnasium[box2d]"),
    ("mujoco", "gymnasium[mujoco]"), ("ale_py", "ale-py"), ("ale-py", "ale-py"), ("opencv", "opencv-python"),
    ("cv2", "opencv-python"), ("moviepy", "moviepy"), ("matplotlib", "matplotlib"),
)


def missing_dependency_note(remote_type: str, message: str) -> str | None:
    """A note for a ``DependencyNotInstalled`` raised in a sandbox: the package is missing there,
    not on the host, and which ``packages=`` entry provides it when it is a known one."""
    if remote_type.rpartition(".")[2] != "DependencyNotInstalled":
        return None
    lowered = message[:2000].lower()
    package = next((extra for word, extra in _GYMNASIUM_EXTRA if word in lowered), None)
    fix = (f'add packages=["{package}"] (or add it to your packages= list)' if package else
           "add the package it names to packages=[...]")
    return (f"The package is missing in the sandbox, not on this host: a sandbox has only what packages= installs "
            f"(and Gymnasium). To install it there, {fix}.")


def add_sandbox_notes(error: RemoteEnvError) -> None:
    """Add :func:`missing_library_note`'s and :func:`missing_dependency_note`'s notes to an env
    error raised in a sandbox, when there are any."""
    for note in (missing_library_note(error.remote_message, error.remote_traceback[-4000:]),
                 missing_dependency_note(error.remote_type, error.remote_message)):
        if note and note not in getattr(error, "__notes__", ()):
            error.add_note(note)
