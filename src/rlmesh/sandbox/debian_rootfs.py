"""Build a ``python:X.Y-slim``-like base image context from Debian packages only.

Used when no container registry is reachable: ``debootstrap`` fetches packages
from a Debian mirror (package archives are usually reachable where registries
are not), the result is post-processed and packed into ``rootfs.tar`` next to a
``FROM scratch`` Dockerfile, ready for ``docker build``.
"""

from __future__ import annotations

import glob
import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Sequence

from ..errors import BootstrapError
from .output_tail import OutputTail

__all__ = [
    "DEBIAN_SUITE_FOR_PYTHON",
    "BootstrapError",
    "build_rootfs_context",
    "host_apt_mirror",
    "suite_for_python",
]

DEBIAN_SUITE_FOR_PYTHON: dict[str, str] = {"3.9": "bullseye", "3.11": "bookworm", "3.13": "trixie"}

_PACKAGES = ("python3", "python3-pip", "python3-venv", "python-is-python3", "ca-certificates")
_DEBIAN_SUITES = frozenset(
    ["buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid"]
    + ["oldoldstable", "oldstable", "stable", "testing", "unstable"]
)
_DOCKERFILE = (
    "FROM scratch\n"
    "ADD rootfs.tar /\n"
    "ENV LANG=C.UTF-8 PYTHONUNBUFFERED=1\n"
    'CMD ["python3"]\n'
)
# Directories whose contents are deleted: docs, translations (as in debian:*-slim),
# device nodes (Docker provides /dev) and temp files.
_PRUNED_DIRS = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "dev", "tmp",
                "var/tmp")
# Directories whose files (at any depth) are deleted, keeping the tree (e.g. apt's partial/).
_CLEARED_DIRS = ("var/cache/apt", "var/lib/apt/lists", "var/log")
# Host files debootstrap copies in; Docker provides its own at run time.
_REMOVED_FILES = ("etc/resolv.conf", "etc/hostname")


def _short_version(python_version: str) -> str:
    return ".".join(python_version.strip().split(".")[:2])


def suite_for_python(python_version: str) -> str:
    """Return the Debian suite whose ``python3`` is the given version.

    Args:
        python_version: ``"X.Y"`` (a patch component is ignored).

    Returns:
        The suite code name, e.g. ``"bookworm"`` for ``"3.11"``.

    Raises:
        BootstrapError: No known Debian release ships that Python version.
    """
    short = _short_version(python_version)
    try:
        return DEBIAN_SUITE_FOR_PYTHON[short]
    except KeyError:
        known = ", ".join(f"{v} ({s})" for v, s in DEBIAN_SUITE_FOR_PYTHON.items())
        raise BootstrapError(
            f"no known Debian release ships Python {short} (known: {known}); "
            "pass the suite explicitly with --suite, or use a Python version listed here",
            step="suite",
        ) from None


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = [{}]
    key = ""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            stanzas.append({})
        elif line[0] in " \t" and key:
            stanzas[-1][key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            stanzas[-1][key] = value.strip()
    return [s for s in stanzas if s]


def _source_entries(path: pathlib.Path) -> list[tuple[str, list[str], list[str], list[str]]]:
    """Return ``(uri, types, suites, components)`` for each enabled entry of a sources file."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    entries: list[tuple[str, list[str], list[str], list[str]]] = []
    if path.suffix == ".sources":
        for st in _deb822_stanzas(text):
            if st.get("enabled", "yes").lower() in ("no", "false", "0"):
                continue
            for uri in st.get("uris", "").split():
                entries.append((uri, st.get("types", "").split(), st.get("suites", "").split(),
                                st.get("components", "").split()))
        return entries
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        if "enabled=no" in line:
            continue
        fields = re.sub(r"\[[^\]]*\]", " ", line).split()
        if len(fields) >= 4:
            entries.append((fields[1], [fields[0]], [fields[2]], fields[3:]))
    return entries


def host_apt_mirror() -> str | None:
    """Return the URI of the host's first enabled Debian ``main`` archive.

    Reads ``/etc/apt/sources.list`` and the ``*.list`` and deb822 ``*.sources``
    files in ``/etc/apt/sources.list.d`` in apt's order. Security archives,
    non-Debian suites and disabled files are skipped.

    Returns:
        The mirror URI (e.g. ``http://<host>/debian``), or None if none is found.
    """
    apt = pathlib.Path("/etc/apt")
    parts = apt / "sources.list.d"
    files = [apt / "sources.list"]
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        for uri, types, suites, components in _source_entries(path):
            if "deb" not in types or "main" not in components or "security" in uri:
                continue
            if not uri.startswith(("http://", "https://", "file:/")):
                continue
            if any(s.split("-")[0] in _DEBIAN_SUITES and not s.endswith("-security") for s in suites):
                return uri.rstrip("/")
    return None


def _mounts_under(root: pathlib.Path) -> list[str]:
    """Mount points at or below ``root``, deepest first."""
    prefix = str(root.resolve())
    found: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def _remove_rootfs(root: pathlib.Path, log: Callable[[str], None]) -> None:
    """Unmount anything debootstrap left mounted inside ``root``, then delete it."""
    if not root.exists():
        return
    for point in _mounts_under(root):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    if _mounts_under(root):  # never recurse into a live /dev or /proc
        log(f"warning: {root} still has mounts; not deleting it, remove it by hand")
        return
    shutil.rmtree(root, ignore_errors=True)


def _run(cmd: Sequence[str], step: str, log: Callable[[str], None] | None, what: str) -> str:
    """Run ``cmd``, streaming lines to ``log`` if given; return its output or raise."""
    tail = OutputTail()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True, env={
                                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                                "DEBIAN_FRONTEND": "noninteractive"})
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            kept = tail.add(line)
            if log is not None:
                log(kept)
        code = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: stop the whole process group
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()  # unclosed, it is a ResourceWarning when collected
    output = tail.text()
    if code != 0:
        raise BootstrapError(f"{what} (exit code {code})", step=step, output=output)
    return output


def _slim(root: pathlib.Path) -> None:
    """Let pip install system-wide and drop what an image does not need."""
    for marker in glob.glob(str(root / "usr/lib/python3*/EXTERNALLY-MANAGED")):
        os.unlink(marker)
    for name in _REMOVED_FILES:
        (root / name).unlink(missing_ok=True)
    for name in _PRUNED_DIRS:
        for entry in list((root / name).glob("*")):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.name != "locale.alias":
                entry.unlink()
    for name in _CLEARED_DIRS:
        for entry in list((root / name).rglob("*")):
            if entry.is_symlink() or not entry.is_dir():
                entry.unlink()


def build_rootfs_context(
    dest: pathlib.Path,
    *,
    python_version: str,
    suite: str | None = None,
    mirror: str | None = None,
    log: Callable[[str], None] = print,
) -> pathlib.Path:
    """Bootstrap a minimal Debian with Python and write a Docker build context.

    Args:
        dest: Directory for the context (created if missing); receives
            ``rootfs.tar`` and ``Dockerfile``.
        python_version: ``"X.Y"``; the bootstrapped ``python3`` must report it.
        suite: Debian suite; defaults to :func:`suite_for_python`.
        mirror: Debian mirror URI; defaults to :func:`host_apt_mirror`, and to
            debootstrap's own default if the host has none.
        log: Receives progress lines (debootstrap output is streamed to it).

    Returns:
        ``dest``.

    Raises:
        BootstrapError: Not root, debootstrap missing or failed, or the suite
            ships another Python version.
    """
    short = _short_version(python_version)
    suite = suite or suite_for_python(short)
    if os.geteuid() != 0:
        raise BootstrapError("building the base image with debootstrap needs root; "
                             "rerun as root (e.g. with sudo)", step="preflight")
    debootstrap = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin:/sbin")
    if debootstrap is None:
        raise BootstrapError("debootstrap is not installed; install it with "
                             "'apt-get install debootstrap' and retry", step="preflight")
    mirror = mirror or host_apt_mirror()
    dest.mkdir(parents=True, exist_ok=True)
    root = pathlib.Path(tempfile.mkdtemp(prefix="rootfs-", dir=dest))
    try:
        root.chmod(0o755)  # mkdtemp makes it 0700, and tar's "." entry becomes the image's /
        cmd = [debootstrap, "--variant=minbase", "--components=main",
               "--include=" + ",".join(_PACKAGES), suite, str(root)]
        log(f"debootstrap {suite} from {mirror or 'the default Debian mirror'} ...")
        _run(cmd + ([mirror] if mirror else []), "debootstrap", log,
             f"debootstrap of Debian {suite} failed; check that the mirror is reachable and "
             "the suite exists (see the output above), or pass another mirror")
        version = _run(["chroot", str(root), "/usr/bin/python3", "-c",
                        "import sys; print('%d.%d' % sys.version_info[:2])"], "verify", None,
                       f"python3 from Debian {suite} does not run").strip()
        if version != short:
            raise BootstrapError(f"Debian {suite} ships Python {version}, not {short}; "
                                 "pass a suite that ships it with --suite", step="verify", output=version)
        _slim(root)
        log("packing rootfs.tar ...")
        part = dest / "rootfs.tar.part"
        _run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(part), "."],
             "pack", None, "packing the root filesystem with tar failed; check free disk space")
        part.replace(dest / "rootfs.tar")
    finally:
        _remove_rootfs(root, log)
    (dest / "Dockerfile").write_text(_DOCKERFILE)
    return dest
