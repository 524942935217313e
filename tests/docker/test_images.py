"""`rlmesh image ls | inspect | prune` against real images, and remembered pull failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rlmesh.errors import InvalidArgumentError
from rlmesh.numpy import SandboxEnv

from .conftest import PROBE_PKG

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rlmesh", *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_images_are_labelled_listed_and_inspected() -> None:
    with SandboxEnv("rlmesh_probe:make_probe", packages=[PROBE_PKG], imports=["rlmesh_probe"]) as env:
        image = env._core.image
        assert image is not None
        rows = json.loads(_cli("image", "ls", "--json").stdout)
        row = next(r for r in rows if image in r["tags"])
        assert row["in_use"] is True  # a container uses it right now
        assert row["packages"] == [PROBE_PKG] and row["imports"] == ["rlmesh_probe"]
        assert row["source"] == "rlmesh_probe:make_probe" and row["version"]
        assert time.time() - row["last_used"] < 600
        inspected = json.loads(_cli("image", "inspect", image).stdout)
        assert inspected["image_id"] == row["image_id"]
        # prune never removes an image a container uses
        dry = _cli("image", "prune", "--unused-for", "0s", "--dry-run")
        assert image not in dry.stdout, dry.stdout
    listed = _cli("image", "ls").stdout
    assert image in listed
    # one row per image, not one per build step: the build's intermediate layers are not listed
    intermediate = {i.strip() for i in subprocess.run(["docker", "images", "-aq", "--no-trunc"], capture_output=True,
                                                      text=True, check=True).stdout.split()} - {
        i.strip() for i in subprocess.run(["docker", "images", "-q", "--no-trunc"], capture_output=True,
                                          text=True, check=True).stdout.split()}
    assert intermediate, "the classic builder keeps intermediate images"
    assert not {r["image_id"] for r in json.loads(_cli("image", "ls", "--json").stdout)} & intermediate


def test_a_listing_into_a_closed_pipe_ends_quietly() -> None:
    # `rlmesh image ls | head -1`: the reader leaves before the listing is written.
    with subprocess.Popen([sys.executable, "-m", "rlmesh", "image", "ls"], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    assert code == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_prune_dry_run_lists_old_versions_without_removing(tmp_path: Path) -> None:
    before = _cli("image", "ls", "--json").stdout
    result = _cli("image", "prune", "--other-versions", "--dry-run")
    assert result.returncode == 0 and "would remove" in result.stdout
    assert _cli("image", "ls", "--json").stdout == before


def test_a_failed_pull_is_remembered_across_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = """
import anyio, logging, sys
logging.basicConfig(level=logging.INFO)
from rlmesh.sandbox._docker import docker_client
from rlmesh.sandbox.image import try_pull
async def main():
    async with docker_client() as docker:
        print("RESULT", await try_pull(docker, "127.0.0.1:9/rlmesh/missing:none"))
anyio.run(main)
"""
    env = {"RLMESH_CACHE_DIR": str(tmp_path), "RLMESH_PULL_POLICY": "missing", "PATH": "/usr/bin:/bin"}
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "RESULT" in first.stdout and "pulling base image" in first.stderr, first.stderr
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "RESULT" in second.stdout and "pulling base image" not in second.stderr
    assert "not pulling 127.0.0.1:9/rlmesh/missing:none: it failed" in second.stderr
    assert (tmp_path / "pull-failures.json").is_file()


def test_build_progress_reaches_a_callback_and_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from rlmesh.sandbox.progress import BuildProgress

    events: list[BuildProgress] = []
    with SandboxEnv("rlmesh_probe:make_probe", packages=[PROBE_PKG], rebuild=True, progress=events.append):
        pass
    phases = [e.phase for e in events]
    assert phases[0] == "resolve" and "build" in phases and phases[-1] == "done"
    assert any(e.message.startswith("Step ") for e in events)
    assert all(b.elapsed >= a.elapsed for a, b in zip(events, events[1:], strict=False))
    with SandboxEnv("rlmesh_probe:make_probe", packages=[PROBE_PKG], rebuild=True, progress=True):
        pass
    assert "rlmesh build" in capsys.readouterr().err  # the status line (tqdm)


def _image_id(ref: str) -> str | None:
    found = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else None


def test_a_rebuild_removes_the_image_it_replaces_unless_in_use() -> None:
    kwargs: dict[str, Any] = {"packages": [PROBE_PKG], "progress": False}
    with SandboxEnv("rlmesh_probe:make_probe", **kwargs) as env:
        tag = env._core.image
        assert tag is not None
        first = _image_id(tag)
        # In use by this sandbox: the rebuild moves the tag, the image stays for its container.
        with SandboxEnv("rlmesh_probe:make_probe", rebuild=True, **kwargs):
            second = _image_id(tag)
        assert second != first and _image_id(str(first)) == first
    with SandboxEnv("rlmesh_probe:make_probe", rebuild=True, **kwargs):
        third = _image_id(tag)
    assert third not in (first, second)
    assert _image_id(str(second)) is None  # no longer named, no longer used: gone, not dangling
    subprocess.run(["docker", "rmi", str(first)], capture_output=True)  # the one left dangling above


def test_no_fallback_warning_when_pulls_are_forbidden() -> None:
    # RLMESH_PULL_POLICY=never (an air-gapped machine that said so): using the bootstrapped base is
    # what was asked for, not a warning on every run. (Python prints WARNINGs with no logging set up.)
    code = "from rlmesh.numpy import SandboxEnv\nwith SandboxEnv('CartPole-v1') as env: env.reset(seed=0)\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "RLMESH_PULL_POLICY": "never"})
    assert result.returncode == 0, result.stderr
    assert "is not available" not in result.stderr, result.stderr


def test_progress_is_checked() -> None:
    with pytest.raises(InvalidArgumentError, match="progress"):
        SandboxEnv("CartPole-v1", progress="yes")
