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
from collections.abc import Sequence
from typing import Any

from ..errors import RemoteEnvError
from .debs import library_package
from .options import GL_PRESETS, listed_system_packages

__all__ = ["add_sandbox_notes", "missing_dependency_note", "missing_library_note", "sandbox_note_context"]


# The env's message and traceback are hostile input (up to 64 KiB and 256 KiB): they are searched
# for literals first and a pattern only ever runs on a bounded token, so the cost stays linear.
_CANNOT_OPEN = ": cannot open shared object file"
_SONAME = re.compile(r"[^\s'\"]{1,200}?\.so(?:\.\d{1,9}){0,4}")
_OTHER_MISSING = re.compile(
    r"OpenGL platform library has not been loaded|[Cc]ould not (?:find|load) (?:the )?(?:library|OSMesa|EGL)"
    r"|Cannot initialize an? EGL device display|Unable to load (?:EGL|OpenGL|OSMesa)"
)
# PyOpenGL's platform files and MuJoCo's context packages: which GL platform failed.
_PLATFORM = re.compile(r"[/\\](osmesa|egl|glx)(?:\.py|[/\\]__init__\.py)")
_NONE_FUNCTION = re.compile(r"'NoneType' object has no attribute '(egl|OSMesa|glX|gl)[A-Z]\w{0,80}'")
_PLATFORM_PACKAGE = {"osmesa": "libosmesa6", "egl": "libegl1", "glx": "libgl1"}
_FUNCTION_PLATFORM = {"egl": "egl", "OSMesa": "osmesa", "glX": "glx"}  # a function's prefix: its platform
_GL_LIBRARIES = {"libEGL": "egl", "libOpenGL": "egl", "libEGL_mesa": "egl", "libOSMesa": "osmesa"}


def missing_library_note(message: str, traceback_tail: str, *, listed: Sequence[str] = (),
                         gl: str | None = None) -> str | None:
    """A note for an env error caused by a shared library missing where the env runs: which
    Debian package to add to ``system_packages``, or the ``gl=`` preset for a headless GL
    platform. ``listed`` and ``gl`` are the sandbox's own: advice it has already taken is never
    given again."""
    soname = _missing_soname(message) or _missing_soname(traceback_tail)
    missing = soname is not None or any(_OTHER_MISSING.search(text) for text in (message, traceback_tail))
    none_function = _NONE_FUNCTION.search(message[:2000])
    gl_context = "OpenGL" in traceback_tail or "mujoco" in traceback_tail
    if not (missing or (none_function and (none_function.group(1) != "gl" or gl_context))):
        return None
    platform = _gl_platform(message[:2000], traceback_tail, soname, none_function)
    if soname is None and platform in GL_PRESETS:
        return _gl_note(platform, listed, gl)
    name = soname.rsplit("/", 1)[-1] if soname else None
    package = library_package(name, guess=False) if name else None
    guess = library_package(name) if name and package is None else None
    if package is None and platform is not None:
        package = _PLATFORM_PACKAGE[platform]
    what = f" ({soname})" if soname else ""
    if package is not None and package in listed:
        fix = (f"system_packages lists {package} already, so something else is missing: find what ships "
               f"{soname or 'it'} with `apt-file search`")
    elif package is not None:
        fix = (f'add "{package}" to your system_packages list' if listed else f'pass system_packages=["{package}"]')
    else:
        named = f' (by Debian\'s naming, probably "{guess}")' if guess else ""
        fix = (f"add the Debian package that ships it{named} to system_packages=[...] "
               f"(`apt-file search {soname or 'NAME'}` or packages.debian.org tells which)")
    note = f"A shared library{what} is missing where the env runs. A pip package cannot provide it: in a sandbox, {fix}."
    if platform in GL_PRESETS:
        note += " " + _gl_note(platform, listed, gl, short=True)
    return note


_GL_NAME = {"egl": "EGL", "osmesa": "OSMesa"}


def _gl_note(platform: str, listed: Sequence[str], gl: str | None, *, short: bool = False) -> str:
    """What headless ``platform`` rendering (egl, osmesa) needs, and what the sandbox lacks of it."""
    preset, env = GL_PRESETS[platform]
    name = _GL_NAME[platform]
    if gl == platform:
        return (f"gl={platform!r} installed {', '.join(preset)} (Mesa's software {name}); a GPU's own {name} needs "
                "gpus= and the NVIDIA container runtime.")
    lacking = [p for p in preset if p not in listed]
    variables = " and ".join(f"{k}={v}" for k, v in env.items())
    head = f"Headless {name} rendering{'' if short else ' failed where the env runs: it'} needs"
    needs = f"{head} the Debian packages {', '.join(preset)}, and {variables}"
    if not lacking:
        return f"{needs}: the packages are in; pass gl={platform!r}, which also sets the variables."
    add = ", ".join(f'"{p}"' for p in lacking)
    return (f"{needs}: pass gl={platform!r} (which installs them and sets the variables), or add {add} to "
            "system_packages and set the variables in env=.")


def _gl_platform(message: str, traceback_tail: str, soname: str | None, none_function: re.Match[str] | None) -> str | None:
    """The GL platform (egl, osmesa, glx) an error comes from, if it is one."""
    if soname is not None:
        stem = soname.rsplit("/", 1)[-1].split(".so", 1)[0]
        if stem in _GL_LIBRARIES:
            return _GL_LIBRARIES[stem]
    if none_function is not None and none_function.group(1) in _FUNCTION_PLATFORM:
        return _FUNCTION_PLATFORM[none_function.group(1)]
    if "EGL" in message:
        return "egl"
    if "OSMesa" in message:
        return "osmesa"
    found = _PLATFORM.search(traceback_tail)
    return found.group(1) if found else None


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


def sandbox_note_context(options: Any) -> dict[str, Any]:
    """What :func:`add_sandbox_notes` needs of a sandbox's options (its listed system packages and
    its GL preset), from a :class:`~rlmesh.sandbox.options.SandboxOptions` (or a container's options)."""
    gl = getattr(options, "gl", None)
    return {"listed": listed_system_packages(getattr(options, "system_packages", ()), gl),
            "gl": gl if gl in GL_PRESETS else None}


def add_sandbox_notes(error: RemoteEnvError, *, listed: Sequence[str] = (), gl: str | None = None) -> None:
    """Add :func:`missing_library_note`'s and :func:`missing_dependency_note`'s notes to an env
    error raised in a sandbox, when there are any (``listed`` and ``gl``: the sandbox's options)."""
    for note in (missing_library_note(error.remote_message, error.remote_traceback[-4000:], listed=listed, gl=gl),
                 missing_dependency_note(error.remote_type, error.remote_message)):
        if note and note not in getattr(error, "__notes__", ()):
            error.add_note(note)
