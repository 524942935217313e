"""System packages: Debian packages resolved and downloaded on the host, installed offline in the image.

The image's own package list (``/var/lib/dpkg/status`` of the base image) is read through the
engine, and the host's ``apt-get`` resolves the requested packages against it, downloading only
what the image lacks, through the host's apt configuration (its mirror, proxy and keys), into a
cache. The build then installs those ``.deb`` files with ``dpkg`` and no network, as it does with
pip wheels. ``RLMESH_APT_OFFLINE=1`` uses the cache only (what tests do).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..errors import ImageBuildError, SandboxError
from ._docker import DockerClient, docker_client
from .base_image import resolve_base_image
from .cache import cache_dir
from .options import check_system_packages
from .output_tail import last_lines

__all__ = ["base_image_file", "check_system_packages", "deb_files", "fetch_debs", "library_package", "library_packages"]

log = logging.getLogger("rlmesh.sandbox.image")

# Debian (bookworm) packages whose names do not follow from their libraries' names, by soname stem
# (the rest follow Debian's policy: libfoo.so.1 is in libfoo1, libfoo2.so.0 in libfoo2-0).
_NAMED = {
    "libglib-2.0": "libglib2.0-0", "libgthread-2.0": "libglib2.0-0", "libgobject-2.0": "libglib2.0-0",
    "libgio-2.0": "libglib2.0-0", "libgmodule-2.0": "libglib2.0-0", "libOSMesa": "libosmesa6",
    "libGLU": "libglu1-mesa", "libGLX": "libglx0", "libGLdispatch": "libglvnd0", "libSDL2-2.0": "libsdl2-2.0-0",
    "libgfortran": "libgfortran5", "libquadmath": "libquadmath0", "libstdc++": "libstdc++6", "libgcc_s": "libgcc-s1",
    "libz": "zlib1g", "libbz2": "libbz2-1.0", "liblzma": "liblzma5", "libssl": "libssl3", "libcrypto": "libssl3",
    "libasound": "libasound2", "libdbus-1": "libdbus-1-3", "libgbm": "libgbm1", "libvulkan": "libvulkan1",
}
# Libraries whose package is the policy's name, checked (a guess for others is only that).
_CHECKED = frozenset({"libGL", "libEGL", "libOpenGL", "libSM", "libICE", "libXext", "libXrender", "libX11", "libxcb",
                      "libgomp", "libsndfile", "libXrandr", "libXi", "libXcursor", "libXinerama", "libXfixes",
                      "libxkbcommon", "libfontconfig", "libfreetype"})
_POLICY = re.compile(r"^(lib[A-Za-z0-9_+.-]{1,100}?)\.so\.([0-9]{1,6})(?:\.[0-9]{1,9}){0,3}$")


def library_package(soname: str, *, guess: bool = True) -> str | None:
    """The Debian package that ships the shared library ``soname`` (``libxcb.so.1``: ``libxcb1``):
    a well-known one, else (``guess``, or for libraries where it is checked) the name Debian's library
    packaging policy gives it."""
    m = _POLICY.match(soname)
    stem = m.group(1) if m else soname.split(".so", 1)[0]
    if stem in _NAMED:
        return _NAMED[stem]
    if m is None or not (guess or stem in _CHECKED):
        return None
    name = stem.lower().replace("_", "-")
    return f"{name}-{m.group(2)}" if name[-1].isdigit() else f"{name}{m.group(2)}"


async def library_packages(sonames: Sequence[str]) -> dict[str, str]:
    """For each of ``sonames`` whose package (see :func:`library_package`) the host's apt knows, that
    package. Whether the package really ships the library is for the caller to check (:func:`deb_files`)."""
    wanted = {name: pkg for name in sonames if (pkg := library_package(name)) is not None}
    if not wanted or shutil.which("apt-cache") is None:
        return {}
    proc = await asyncio.create_subprocess_exec(
        "apt-cache", "policy", *sorted(set(wanted.values())), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, env={**os.environ, "LC_ALL": "C"},
    )
    out, _ = await proc.communicate()
    known = {m.group(1) for m in re.finditer(r"^(\S+):\n\s+Installed: .*\n\s+Candidate: (?!\(none\))\S+",
                                            out.decode(errors="replace"), re.MULTILINE)}
    return {name: pkg for name, pkg in wanted.items() if pkg in known}


async def deb_files(path: Path) -> set[str]:
    """The base names of the files a ``.deb`` installs (``dpkg-deb --contents``)."""
    proc = await asyncio.create_subprocess_exec(
        "dpkg-deb", "--contents", str(path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "LC_ALL": "C"},
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise ImageBuildError(f"dpkg-deb could not read {path.name}", exit_code=proc.returncode,
                              logs=last_lines(err.decode(errors="replace")))
    names = set()
    for line in out.decode(errors="replace").splitlines():
        path_text = line.split(maxsplit=5)[-1].split(" -> ")[0] if line.strip() else ""
        names.add(path_text.rstrip("/").rsplit("/", 1)[-1])
    return names


def _cache() -> Path:
    return cache_dir() / "debs"


_BASE_FILES = {"/var/lib/dpkg/status": "status", "/etc/ld.so.cache": "ld-cache"}


async def base_image_file(docker: DockerClient, base_ref: str, base_id: str, path: str, *,
                          missing_ok: bool = False) -> Path | None:
    """A file of the base image (its dpkg status, its linker cache), read through the engine once
    and kept in the cache by image id; None when the image has no such file and ``missing_ok``.

    Raises:
        SandboxError: The engine failed, or (without ``missing_ok``) the image has no such file.
    """
    local = (_cache() / _BASE_FILES[path] / base_id.replace(":", "_")).resolve()
    if local.is_file():
        return local
    try:
        data = await docker.read_image_file(base_ref, path)
    except SandboxError as exc:
        if missing_ok and ("has no file" in str(exc) or "404" in str(exc)):
            return None
        raise
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(local)
    return local


async def fetch_debs(docker: DockerClient, base_ref: str, base_id: str, packages: Sequence[str], dest: Path) -> list[str]:
    """Download into ``dest`` the ``.deb`` files ``packages`` need on top of the base image.

    Returns:
        The file names placed in ``dest`` (empty when the image has everything already).

    Raises:
        ImageBuildError: apt cannot find or fetch a package (the message names it).
    """
    if shutil.which("apt-get") is None:
        raise ImageBuildError(
            "system_packages are resolved with the host's apt-get, which this machine lacks; "
            "build on a Debian or Ubuntu host, or bake the packages into a base_image"
        )
    cache = _cache().resolve()  # apt reads relative paths against Dir::Cache
    status = await base_image_file(docker, base_ref, base_id, "/var/lib/dpkg/status")
    assert status is not None
    archives = cache / "archives"
    (archives / "partial").mkdir(parents=True, exist_ok=True)
    apt_cache = cache / "apt-cache"
    apt_cache.mkdir(parents=True, exist_ok=True)
    args = [
        "apt-get", "install", "--download-only", "--yes", "--no-install-recommends",
        "-o", f"Dir::State::status={status}", "-o", f"Dir::Cache={apt_cache}",
        "-o", f"Dir::Cache::archives={archives}", "-o", "Debug::NoLocking=1",
        "-o", "APT::Get::Print-URIs=false",
    ]
    if os.environ.get("RLMESH_APT_OFFLINE"):
        args.append("--no-download")
    # Which files this resolution needs: apt prints the packages it would install.
    plan = await _run([*args[:2], "--simulate", *args[2:], *packages], packages)
    wanted = [m.group(1, 2) for m in re.finditer(r"^Inst (\S+) \((\S+)", plan, re.MULTILINE)]
    if not wanted:
        return []
    await _run([*args, *packages], packages)
    names = []
    for name, version in wanted:
        found = sorted(archives.glob(f"{name}_{version.replace(':', '%3a')}_*.deb"))
        if not found:
            raise ImageBuildError(f"apt planned {name} {version} for system_packages but its .deb is not in {archives}")
        shutil.copy2(found[0], dest / found[0].name)
        names.append(found[0].name)
    log.info("system packages for the image: %s", " ".join(f"{n}={v}" for n, v in wanted))
    return names


async def _run(args: list[str], packages: Sequence[str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"},
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        missing = re.findall(r"Unable to locate package (\S+)|Package '?(\S+?)'? has no installation candidate", text)
        names = [a or b for a, b in missing]
        hint = (f"Debian has no package {', '.join(names)} (check the name with `apt-cache search`); "
                if names else "")
        raise ImageBuildError(
            f"apt-get on the host could not resolve system_packages {list(packages)}: {hint}"
            "if the package exists, run `apt-get update` on the host (apt uses its lists), or, offline, "
            "fill the cache first",
            exit_code=proc.returncode, logs=last_lines(text),
        )
    return text


async def prefetch(packages: Sequence[str], base_image: str | None = None) -> list[str]:
    """Download ``packages`` (for the default base image, or ``base_image``) into the cache, so that
    later builds work with ``RLMESH_APT_OFFLINE=1``; returns the ``.deb`` files."""
    async with docker_client() as docker:
        base_ref, base_id = await resolve_base_image(docker, base_image)
        with tempfile.TemporaryDirectory(prefix="rlmesh-debs-") as tmp:
            return await fetch_debs(docker, base_ref, base_id, check_system_packages(list(packages)), Path(tmp))

