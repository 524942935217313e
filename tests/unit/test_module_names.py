"""Modules named for what they are: the serve command in server/, the cache directory on its own,
the Debian root filesystem builder; the old entry points keep working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import rlmesh.serve
from rlmesh.sandbox import debs, housekeeping
from rlmesh.sandbox.bootstrap import bootstrap_base_image
from rlmesh.sandbox.cache import cache_dir
from rlmesh.sandbox.debian_rootfs import build_rootfs_context
from rlmesh.server import serve

REPO = Path(__file__).resolve().parents[2]


def _usage(*args: str) -> str:
    out = subprocess.run([sys.executable, *args, "--help"], capture_output=True, text=True, cwd=REPO, timeout=60,
                         check=True).stdout
    return out[out.index("options:"):]  # the arguments, whatever the program's name and description


def test_python_m_rlmesh_serve_is_the_server_s_serve_command() -> None:
    assert rlmesh.serve.main is serve.main and rlmesh.serve.build_parser is serve.build_parser
    old = _usage("-m", "rlmesh.serve")
    assert old == _usage("-m", "rlmesh.server.serve") == _usage("-m", "rlmesh", "serve")
    assert "--dial" in old and "--selector" in old


def test_the_cache_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RLMESH_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert debs._cache() == tmp_path / "c" / "debs" and housekeeping._uses_file() == tmp_path / "c" / "images-used.json"
    monkeypatch.delenv("RLMESH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "rlmesh"


def test_the_debian_root_filesystem_builder_is_named_so() -> None:
    assert build_rootfs_context.__module__ == "rlmesh.sandbox.debian_rootfs"
    assert bootstrap_base_image.__module__ == "rlmesh.sandbox.bootstrap"  # the command, which uses it
