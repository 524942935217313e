"""The shared-library scan of resolved wheels (:mod:`rlmesh.sandbox.shared_libs`) and the soname
to Debian package mapping (:func:`rlmesh.sandbox.debs.library_package`), on real ELF files and
on hostile ones."""

from __future__ import annotations

import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rlmesh.errors import InvalidArgumentError
from rlmesh.sandbox.debs import library_package
from rlmesh.sandbox.options import SandboxOptions, check_library_patterns, check_system_packages
from rlmesh.sandbox.shared_libs import elf_needed, ld_cache_names, missing_libraries, provided_by_system


def _real_extension() -> Path:
    import _ctypes

    return Path(_ctypes.__file__)


def test_the_needed_libraries_of_a_real_extension_module_are_read() -> None:
    # What the dynamic linker will look for: compare with readelf where the host has it.
    path = _real_extension()
    needed = elf_needed(path.read_bytes())
    assert "libc.so.6" in needed
    readelf = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True)
    if readelf.returncode == 0:  # binutils: not on every machine
        assert needed == [line.split("[")[1].split("]")[0] for line in readelf.stdout.splitlines() if "(NEEDED)" in line]


def test_a_library_a_wheel_ships_or_the_image_has_is_not_missing(tmp_path: Path) -> None:
    data = _real_extension().read_bytes()
    needs = elf_needed(data)
    wheel = tmp_path / "demo-1.0-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("demo/_ext.so", data)
    missing = {m.name for m in missing_libraries([wheel], known=set())}
    assert missing == {n for n in needs if not provided_by_system(n)}
    assert not missing_libraries([wheel], known=set(needs))
    shipped = tmp_path / "ships-1.0-py3-none-any.whl"
    with zipfile.ZipFile(shipped, "w") as zf:
        for name in needs:
            zf.writestr(f"ships.libs/{name}", b"not even an ELF file")
    assert not missing_libraries([wheel, shipped], known=set())
    assert missing_libraries([wheel], known=set())[0].needed_by[0].endswith(": demo/_ext.so")


def _elf(needed: list[bytes], *, phnum: int = 2, dyn_count: int | None = None, strtab_addr: int = 0x1000,
         load_vaddr: int = 0x1000) -> bytes:
    """A minimal 64-bit little-endian ELF with a PT_LOAD over its string table and a PT_DYNAMIC."""
    strings = b"\0" + b"".join(n + b"\0" for n in needed)
    offsets = []
    at = 1
    for n in needed:
        offsets.append(at)
        at += len(n) + 1
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    header[4], header[5] = 2, 1
    phoff = 64
    struct.pack_into("<Q", header, 32, phoff)
    struct.pack_into("<HH", header, 54, 56, phnum)
    str_off = phoff + 56 * 2
    dyn_off = str_off + len(strings)
    entries = [(1, o) for o in offsets] + [(5, strtab_addr), (0, 0)]
    dynamic = b"".join(struct.pack("<qQ", t, v) for t, v in entries)
    count = len(dynamic) if dyn_count is None else dyn_count
    ph = struct.pack("<IIQQQQQQ", 1, 0, str_off, load_vaddr, load_vaddr, len(strings), len(strings), 1)
    ph += struct.pack("<IIQQQQQQ", 2, 0, dyn_off, 0x2000, 0x2000, count, count, 8)
    return bytes(header) + ph + strings + dynamic


def test_a_minimal_elf_is_read() -> None:
    assert elf_needed(_elf([b"libfoo.so.1", b"libbar.so.2"])) == ["libfoo.so.1", "libbar.so.2"]


@pytest.mark.parametrize("data", [
    b"", b"\x7fELF", b"\x7fELF" + b"\xff" * 60,                      # truncated, nonsense class
    _elf([b"libfoo.so.1"])[:100],                                       # cut inside the program headers
    _elf([b"libfoo.so.1"], dyn_count=1 << 40),                          # a dynamic segment "larger" than the file
    _elf([b"libfoo.so.1"], strtab_addr=0xDEAD0000),                     # a string table nowhere
    _elf([b"libfoo.so.1"], phnum=0xFFFF),                               # 65535 program headers claimed
    _elf([b"x" * 10_000]),                                              # a name past the bound
])
def test_a_hostile_elf_gives_no_names_or_bounded_ones(data: bytes) -> None:
    names = elf_needed(data)
    assert all(len(n) <= 256 for n in names)


def test_a_hostile_wheel_is_scanned_in_bounded_time_and_memory(tmp_path: Path) -> None:
    # A zip bomb member named like a library, a corrupt zip, and a member claiming a huge size: the
    # scan reads at most 64 MiB of a member, and gives up on what it cannot read. (A subprocess: a
    # hang or a blow-up is caught by its timeout and its memory limit, not by a wall-clock assertion.)
    bomb = tmp_path / "bomb-1.0-py3-none-any.whl"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb/huge.so", b"\x7fELF" + b"\0" * (300 << 20))
        zf.writestr("bomb/bin/tool", _elf([b"libtool-dep.so.3"]))
    (tmp_path / "corrupt-1.0-py3-none-any.whl").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    code = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from rlmesh.sandbox.shared_libs import missing_libraries\n"
        "found = missing_libraries(sorted(Path(sys.argv[1]).glob('*.whl')), known=set())\n"
        "print(sorted(m.name for m in found))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['libtool-dep.so.3']"


def test_the_linker_cache_names_its_libraries() -> None:
    cache = Path("/etc/ld.so.cache")  # Debian's, as in the base image
    names = ld_cache_names(cache.read_bytes())
    assert "libc.so.6" in names


@pytest.mark.parametrize(("soname", "package"), [
    ("libxcb.so.1", "libxcb1"), ("libX11.so.6", "libx11-6"), ("libGL.so.1", "libgl1"), ("libEGL.so.1", "libegl1"),
    ("libOpenGL.so.0", "libopengl0"), ("libglib-2.0.so.0", "libglib2.0-0"), ("libOSMesa.so.8", "libosmesa6"),
    ("libgfortran.so.5", "libgfortran5"), ("libpng16.so.16", "libpng16-16"), ("libSDL2-2.0.so.0", "libsdl2-2.0-0"),
    ("libfoo.so", None), ("not-a-library", None),
])
def test_a_library_maps_to_its_debian_package(soname: str, package: str | None) -> None:
    assert library_package(soname) == package


def test_driver_libraries_are_never_looked_for_in_the_image() -> None:
    assert provided_by_system("libcuda.so.1") and provided_by_system("libnvidia-ml.so.1")
    assert not provided_by_system("libGL.so.1")


def test_system_packages_is_auto_or_a_list_with_auto_alongside() -> None:
    assert check_system_packages("auto") == ()
    assert check_system_packages(["auto", "libxcb1"]) == ("libxcb1",)
    assert SandboxOptions().system_packages == "auto"
    with pytest.raises(InvalidArgumentError, match="'auto' or a list"):
        check_system_packages("libxcb1")
    with pytest.raises(InvalidArgumentError, match="ignore_libraries"):
        check_library_patterns("libcuda.so.1")
    with pytest.raises(InvalidArgumentError, match="ignore_libraries"):
        check_library_patterns(["lib foo; rm -rf /"])
    with pytest.raises(InvalidArgumentError, match="gl must be"):
        SandboxOptions(gl="vulkan")


def test_a_scan_is_remembered_on_disk_for_the_next_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from rlmesh.sandbox import shared_libs

    monkeypatch.setenv("RLMESH_CACHE_DIR", str(tmp_path / "cache"))
    wheel = tmp_path / "demo-1.0-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("demo/_ext.so", _elf([b"libfoo.so.1"]))
    assert [m.name for m in missing_libraries([wheel], known=set())] == ["libfoo.so.1"]
    [remembered] = (tmp_path / "cache" / "wheel-libraries").glob("*.json")
    data = json.loads(remembered.read_text())
    data["needs"]["libbar.so.2"] = ["demo/_ext.so"]  # what a later process reads, not the wheel
    remembered.write_text(json.dumps(data))
    monkeypatch.setattr(shared_libs, "_scanned", {})
    assert [m.name for m in missing_libraries([wheel], known=set())] == ["libbar.so.2", "libfoo.so.1"]
    remembered.write_text("not json")  # a damaged record: the wheel is read again
    monkeypatch.setattr(shared_libs, "_scanned", {})
    assert [m.name for m in missing_libraries([wheel], known=set())] == ["libfoo.so.1"]
