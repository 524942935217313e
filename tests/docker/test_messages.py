"""Messages that say what to do (issue #20, section 5), against the real engine.

Each test starts real sandboxes (or real containers labelled as sandboxes) and reads what a
user would read: the exception's text, the log records, the command line's output.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rlmesh.errors import ImageBuildError, RemoteEnvError, SandboxStartError
from rlmesh.numpy import SandboxEnv
from rlmesh.sandbox._docker import docker_client
from rlmesh.sandbox.env import AsyncSandboxEnv
from rlmesh.sandbox.image import ImageSpec, ensure_image

from .conftest import PROBE_PKG, sandbox_containers
from .test_hf import REPO as HUB_REPO
from .test_hf import SHA as HUB_SHA
from .test_hf import hub_cache  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rlmesh", *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_a_failed_imports_check_leads_with_the_module_and_what_to_add() -> None:
    # ale_py is installed on this host (the dev extra), so the error names its distribution.
    with pytest.raises(ImageBuildError) as caught:
        SandboxEnv("CartPole-v1", imports=["ale_py"], progress=False)
    text = str(caught.value)
    assert text.startswith("imports: 'ale_py' cannot be imported in the sandbox image "
                           "(ModuleNotFoundError: No module named 'ale_py'): add packages=['ale-py']"), text
    assert "\x1b" not in text and "\x1b" not in caught.value.logs  # no terminal colours in a log tail
    assert "returned a non-zero code: 1" in text  # Docker's own words follow, in brackets


def test_a_namespace_nothing_registered_says_what_to_add_in_a_sandbox() -> None:
    # Without ale-py in the image: the package and the import to add.
    with pytest.raises(SandboxStartError) as bare:
        SandboxEnv("ALE/Pong-v5", progress=False)
    assert "Namespace ALE not found" in str(bare.value)
    assert "packages=['ale-py'], imports=['ale_py']" in str(bare.value).splitlines()[0]
    # With ale-py installed but not imported: the import to add.
    with pytest.raises(SandboxStartError) as unimported:
        SandboxEnv("ALE/Pong-v5", packages=["ale-py"], progress=False)
    assert "pass imports=['ale_py']" in str(unimported.value).splitlines()[0]
    with SandboxEnv("ALE/Pong-v5", packages=["ale-py"], imports=["ale_py"], progress=False) as env:
        assert env.reset(seed=0)[0].shape == (210, 160, 3)


def test_the_documented_factory_forms_do_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rlmesh")
    # The docs' form: a factory from a package the image installs (build options settle it).
    with SandboxEnv("rlmesh_probe:make_probe", packages=[PROBE_PKG], progress=False) as env:
        env.reset(seed=0)
    # The explicit form.
    with SandboxEnv("py://rlmesh_probe:make_probe", packages=[PROBE_PKG], progress=False) as env:
        env.reset(seed=0)
    assert not [r for r in caplog.records if "module:factory" in r.getMessage()], caplog.text
    # A factory whose module imports on this host (and in the image): no doubt either.
    with SandboxEnv("gymnasium.envs.classic_control:CartPoleEnv", progress=False) as env:
        env.reset(seed=0)
    assert not [r for r in caplog.records if "module:factory" in r.getMessage()], caplog.text


def test_a_truly_ambiguous_name_tag_warns_and_says_how_to_settle_it(caplog: pytest.LogCaptureFixture) -> None:
    # No local image by that name, no build option, no such module here: it could be either.
    caplog.set_level(logging.WARNING, logger="rlmesh")
    with pytest.raises(SandboxStartError, match="nosuchmodule_h2"):
        SandboxEnv("nosuchmodule_h2:latest", progress=False)
    warned = [r.getMessage() for r in caplog.records if "module:factory" in r.getMessage()]
    assert warned and "py://nosuchmodule_h2:latest" in warned[0] and "docker://nosuchmodule_h2:latest" in warned[0]


async def test_a_rebuild_keeps_the_replaced_image_until_the_sandbox_has_started() -> None:
    # A spec of its own (imports=["colorsys"]), so no other test's image is rebuilt.
    kwargs = {"imports": ["colorsys"], "progress": False}
    async with AsyncSandboxEnv("CartPole-v1", **kwargs) as env:
        tag = env.image
    assert tag is not None
    first = _image_id(tag)
    spec = ImageSpec(imports=("colorsys",), source="CartPole-v1")
    async with docker_client() as docker:
        moved, _, replaced = await ensure_image(docker, spec, rebuild=True)
    # ensure_image moves the tag but leaves the replaced image: the start removes it once it runs.
    assert moved == tag and replaced == first and _image_id(first or "") == first
    subprocess.run(["docker", "rmi", str(first)], capture_output=True)
    second = _image_id(tag)
    async with AsyncSandboxEnv("CartPole-v1", rebuild=True, **kwargs) as env:
        await env.reset(seed=0)
    assert _image_id(tag) not in (None, second)
    assert _image_id(second or "") is None  # removed once the rebuilt sandbox had started (close waits for it)


def _image_id(ref: str) -> str | None:
    found = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else None


def test_image_inspect_shows_dates() -> None:
    with SandboxEnv("CartPole-v1", progress=False) as env:
        image = env._core.image
    assert image is not None
    row = json.loads(_cli("image", "inspect", image).stdout)
    for key in ("created", "last_used"):
        assert isinstance(row[key], str) and row[key].endswith(" UTC") and row[key][:2] == "20", row


def test_sandbox_ls_shows_the_owner_pid_and_cleanup_dry_run_removes_nothing(sandbox_image: str) -> None:
    with SandboxEnv("CartPole-v1", progress=False) as env:
        listing = _cli("sandbox", "ls")
        line = next(row for row in listing.stdout.splitlines() if row.startswith(str(env.container_id)[:12]))
        assert f" {os.getpid()} " in line and "alive" in line
        rows = json.loads(_cli("sandbox", "ls", "--json").stdout)
        assert next(r for r in rows if r["id"] == str(env.container_id)[:12])["owner_pid"] == os.getpid()
    # A container whose owner died, made by hand with such an owner's labels.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = dead.stdout.strip()
    pidns = os.readlink("/proc/self/ns/pid").removeprefix("pid:[").removesuffix("]")
    label = f"{socket.gethostname()}:{pidns}:{pid}:1:deadbeef"
    cid = subprocess.run(
        ["docker", "run", "-d", "--network", "none", "--label", "rlmesh.sandbox=1", "--label", f"rlmesh.owner={label}",
         "--label", "rlmesh.source=dry-run-probe", sandbox_image, "sleep", "300"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    try:
        dry = _cli("sandbox", "cleanup", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f"would remove {cid[:12]} (dry-run-probe, owner PID {pid}, dead)" in dry.stdout
        assert cid in sandbox_containers()  # still there
        cleanup = _cli("sandbox", "cleanup")
        assert cleanup.returncode == 0 and cid not in sandbox_containers()
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)


def test_a_dependency_missing_in_the_sandbox_says_so_and_names_the_package() -> None:
    # The host has pygame and Box2D (the dev extra); the default sandbox has neither. (check_env's
    # render check meets it at the same call.)
    with SandboxEnv("CartPole-v1", render_mode="rgb_array", progress=False) as env:
        env.reset(seed=0)
        with pytest.raises(RemoteEnvError) as caught:
            env.render()
    notes = "\n".join(getattr(caught.value, "__notes__", ()))
    assert "missing in the sandbox, not on this host" in notes
    assert 'add packages=["gymnasium[classic-control]"]' in notes
    with pytest.raises(SandboxStartError) as lunar:
        SandboxEnv("LunarLander-v3", progress=False)
    notes = "\n".join(getattr(lunar.value, "__notes__", ()))
    assert "DependencyNotInstalled" in str(lunar.value) and 'add packages=["gymnasium[box2d]"]' in notes


def test_a_repository_of_several_envs_lists_them_as_sources(hub_cache: Path) -> None:  # noqa: F811
    with pytest.raises(SandboxStartError) as caught:
        SandboxEnv(f"hf://{HUB_REPO}@{HUB_SHA}", trust_remote_code=True, progress=False)
    text = str(caught.value)
    assert f"hf://{HUB_REPO}@{HUB_SHA} has 3 envs: choose one by naming it after the repository" in text
    for task in ("cartpole_suite/0", "cartpole_suite/1", "other_suite/a"):
        assert f"  hf://{HUB_REPO}@{HUB_SHA}:{task}" in text
    assert "<sha>" not in text and "SUITE/TASK, one of" in text
