"""Shared libraries: which ones the extension modules of resolved wheels need and nothing provides.

What ``ldd`` would say, worked out on the host before the build: each ELF file in the wheels
names the libraries it needs (``DT_NEEDED``); a library is found when the image's dynamic linker
knows it (its ``/etc/ld.so.cache``, read from the base image) or a wheel ships a file of that
name (auditwheel's ``<pkg>.libs``, or ``$ORIGIN`` runpaths). The rest are missing: the build
maps them to Debian packages (:mod:`.debs`).

A wheel's scan is remembered (in memory, and on disk under the cache by file name and size), so
builds that reuse a cached wheel do not read it again. Wheels are untrusted input: the parser reads bounded amounts (a member's first 64 MiB, at most
4096 dynamic entries, names of at most 256 bytes) and gives up on a malformed file (it is then
not a library the linker could load either).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .cache import cache_dir

__all__ = ["MissingLibrary", "elf_needed", "ld_cache_names", "missing_libraries", "provided_by_system"]

_MAX_MEMBER = 64 << 20
_MAX_ENTRIES = 4096
_MAX_NAME = 256
_DT_NEEDED = 1
_PT_DYNAMIC = 2
_SONAME = re.compile(rb"[A-Za-z0-9_+.-]{1,200}\.so(?:\.[0-9]{1,9}){0,4}")
# Libraries that the machine, not the image, provides: the GPU driver's (mounted into the container
# by the NVIDIA runtime with gpus=...), never a Debian package of the base's archive.
_DRIVER = re.compile(r"^lib(?:cuda|nvidia-[\w-]+|nvcuvid|nvoptix|GLX_nvidia|EGL_nvidia|GLESv\w*_nvidia)\.so")
# Always found: the C library's own (the dynamic linker's names are not all in its cache).
_LIBC = frozenset({"ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1", "ld-linux.so.2", "linux-vdso.so.1"})


def elf_needed(data: bytes) -> list[str]:
    """The ``DT_NEEDED`` names of an ELF shared object or executable (empty if it is not one)."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        return []
    wide = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    try:
        if wide:
            phoff, = struct.unpack_from(end + "Q", data, 32)
            phentsize, phnum = struct.unpack_from(end + "HH", data, 54)
        else:
            phoff, = struct.unpack_from(end + "I", data, 28)
            phentsize, phnum = struct.unpack_from(end + "HH", data, 42)
        segments = []
        for i in range(min(phnum, 256)):
            at = phoff + i * phentsize
            if wide:
                p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(end + "IIQQQQ", data, at)
            else:
                p_type, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(end + "IIIII", data, at)
            segments.append((p_type, p_offset, p_vaddr, p_filesz))
        dynamic = next((s for s in segments if s[0] == _PT_DYNAMIC), None)
        if dynamic is None:
            return []
        entry = struct.Struct(end + ("qQ" if wide else "iI"))
        needed: list[int] = []
        strtab = None
        for i in range(min(dynamic[3] // entry.size, _MAX_ENTRIES)):
            tag, value = entry.unpack_from(data, dynamic[1] + i * entry.size)
            if tag == 0:
                break
            if tag == _DT_NEEDED:
                needed.append(value)
            elif tag == 5:  # DT_STRTAB: an address; its file offset is found through the load segments
                strtab = value
        if strtab is None:
            return []
        base = next((off + strtab - vaddr for kind, off, vaddr, size in segments
                     if kind == 1 and vaddr <= strtab < vaddr + size), None)
        if base is None:
            return []
        names = []
        for offset in needed:
            start = base + offset
            stop = data.find(b"\0", start, start + _MAX_NAME)
            if stop > start:
                names.append(data[start:stop].decode("utf-8", "replace"))
        return names
    except struct.error:
        return []


def ld_cache_names(cache: bytes) -> set[str]:
    """The library names in a dynamic linker cache (``/etc/ld.so.cache``)."""
    return {m.group().decode() for m in _SONAME.finditer(cache)} | {
        m.group().decode().rsplit("/", 1)[-1] for m in re.finditer(rb"/[\w/+.-]{1,300}\.so[\w.]*", cache)
    }


def provided_by_system(name: str) -> bool:
    """Whether ``name`` comes from outside the image (the C library's loader, the GPU driver)."""
    return name in _LIBC or _DRIVER.match(name) is not None


@dataclass
class MissingLibrary:
    """A library that something in the wheels needs and nothing provides."""

    name: str
    needed_by: list[str] = field(default_factory=list)  # "wheel: member" for each that names it


def missing_libraries(wheels: Iterable[Path], known: set[str]) -> list[MissingLibrary]:
    """The libraries the ELF files in ``wheels`` need that neither ``known`` (the names in the base
    image's linker cache) nor a wheel provides, in name order."""
    provided: set[str] = set()
    needs: dict[str, list[str]] = {}
    for wheel in wheels:
        has, wants = _scan(wheel)
        provided |= has
        for name, members in wants.items():
            needs.setdefault(name, []).extend(f"{wheel.name}: {member}" for member in members)
    return [MissingLibrary(name, where) for name, where in sorted(needs.items())
            if name not in provided and name not in known and not provided_by_system(name)]


_scanned: dict[tuple[str, int, int], tuple[set[str], dict[str, list[str]]]] = {}


def _scan(wheel: Path) -> tuple[set[str], dict[str, list[str]]]:
    """The library file names a wheel has, and the libraries its ELF members need (by member);
    remembered by name, size and mtime for the process (the wheel cache holds the same files)."""
    try:
        stat = wheel.stat()
    except OSError:
        return set(), {}
    key = (wheel.name, stat.st_size, stat.st_mtime_ns)
    if key in _scanned:
        return _scanned[key]
    found = _read_scan(wheel, stat.st_size)
    if found is not None:
        _scanned[key] = found
        return found
    provided: set[str] = set()
    needs: dict[str, list[str]] = {}
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                base = info.filename.rsplit("/", 1)[-1]
                if not _is_library_name(base) and not _maybe_elf(info):
                    continue
                provided.add(base)
                if info.file_size > _MAX_MEMBER:
                    continue
                with zf.open(info) as member:
                    head = member.read(4)
                    if head != b"\x7fELF":
                        continue
                    data = head + member.read(_MAX_MEMBER)
                for name in elf_needed(data):
                    needs.setdefault(name, []).append(info.filename)
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError):
        pass  # pip installs only what it can read: the build says what is wrong with it
    _scanned[key] = (provided, needs)
    _write_scan(wheel, stat.st_size, provided, needs)
    return provided, needs


def _scan_file(wheel: Path, size: int) -> Path:
    # A wheel's file name and size name its contents (the wheel cache never rewrites a file in place).
    digest = hashlib.sha256(f"{wheel.name}\0{size}".encode()).hexdigest()[:32]
    return cache_dir() / "wheel-libraries" / f"{digest}.json"


def _read_scan(wheel: Path, size: int) -> tuple[set[str], dict[str, list[str]]] | None:
    """A scan remembered on disk (from an earlier build, by another process), or None."""
    try:
        data = json.loads(_scan_file(wheel, size).read_text())
        provided, needs = data["provided"], data["needs"]
        if data.get("wheel") != wheel.name or not isinstance(provided, list) or not isinstance(needs, dict):
            return None
        return set(map(str, provided)), {str(k): [str(m) for m in v] for k, v in needs.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_scan(wheel: Path, size: int, provided: set[str], needs: dict[str, list[str]]) -> None:
    path = _scan_file(wheel, size)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"wheel": wheel.name, "provided": sorted(provided), "needs": needs}))
        tmp.replace(path)


def _is_library_name(base: str) -> bool:
    return ".so" in base


def _maybe_elf(info: zipfile.ZipInfo) -> bool:
    # An executable in a wheel's scripts or bin (ffmpeg, say) needs its libraries too.
    return "/bin/" in f"/{info.filename}" and not info.is_dir()
