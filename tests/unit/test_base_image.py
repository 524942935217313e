"""The base image's choice and remembered pull failures, without an engine (nothing reaches it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, cast

import pytest

from rlmesh.errors import InvalidArgumentError
from rlmesh.sandbox import base_image, image
from rlmesh.sandbox.base_image import bootstrap_tag, default_base_image, try_pull

NO_DOCKER: Any = cast(Any, None)  # try_pull must not reach the engine in these tests


def test_the_default_bases_follow_the_host_s_python() -> None:
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert default_base_image() == f"python:{py}-slim" and bootstrap_tag() == f"rlmesh/base:py{py}"
    assert image.try_pull is try_pull and image.PY_VERSION == base_image.PY_VERSION == py  # where callers look


async def test_no_pull_when_pulls_are_forbidden(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RLMESH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("RLMESH_PULL_POLICY", "never")
    assert await try_pull(NO_DOCKER, "rlmesh-test/never:1") == "RLMESH_PULL_POLICY=never forbids pulling"
    monkeypatch.setenv("RLMESH_PULL_POLICY", "sometimes")
    with pytest.raises(InvalidArgumentError, match="RLMESH_PULL_POLICY must be 'missing' or 'never'"):
        await try_pull(NO_DOCKER, "rlmesh-test/never:1")


async def test_a_remembered_failure_is_not_tried_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RLMESH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("RLMESH_PULL_POLICY", "missing")
    ref = "127.0.0.1:9/rlmesh/remembered:1"
    base_image._remember_failure(ref, "connection refused")
    assert (tmp_path / "pull-failures.json").is_file()
    said = await try_pull(NO_DOCKER, ref)
    assert said is not None and "ago (connection refused)" in said
    monkeypatch.setenv("RLMESH_PULL_RETRY", "0")
    assert base_image._remembered_failure(ref) is None  # forgotten once RLMESH_PULL_RETRY has passed
    base_image._pull_failures.pop(ref, None)
