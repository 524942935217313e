"""Prebuilt image sources, runtime options and misplaced options."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import pytest

from rlmesh.errors import SandboxStartError
from rlmesh.numpy import AsyncSandboxEnv, SandboxEnv, SandboxVectorEnv

from .conftest import PY, inspect
from .test_sandbox import _same

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "rlmesh-test/prebuilt-cartpole:1"
TAGLESS = "rlmesh-test-prebuilt-cartpole"


def _base() -> str:
    ok = subprocess.run(["docker", "image", "inspect", f"python:{PY}-slim"], capture_output=True).returncode == 0
    return f"python:{PY}-slim" if ok else f"rlmesh/base:py{PY}"


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Build images/Dockerfile.example the way its header says, from wheels made on the host."""
    ctx = tmp_path_factory.mktemp("prebuilt")
    wheels = ctx / "wheels"
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--wheel-dir", str(wheels)]
    subprocess.run([*pip, "--no-deps", str(ROOT)], check=True, capture_output=True)
    subprocess.run([*pip, "numpy", "orjson", "gymnasium"], check=True, capture_output=True)
    shutil.copy(ROOT / "images" / "Dockerfile.example", ctx / "Dockerfile")
    subprocess.run(["docker", "build", "-q", "--build-arg", f"BASE={_base()}", "-t", IMAGE, "-t", TAGLESS, str(ctx)],
                   check=True, capture_output=True)
    yield IMAGE
    subprocess.run(["docker", "rmi", "-f", IMAGE, TAGLESS], capture_output=True)


@pytest.mark.parametrize("form", ["docker://{}", "image://{}", "{}"])
def test_prebuilt_image_forms_run_without_a_build(prebuilt: str, form: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="rlmesh")
    with SandboxEnv(form.format(prebuilt), max_episode_steps=3) as env:  # kwargs passed at run time
        assert env._core.image == prebuilt
        ref = gym.make("CartPole-v1", max_episode_steps=3)
        _same(env.reset(seed=1), ref.reset(seed=1))
        for _ in range(3):
            _same(env.step(0), ref.step(0))
    messages = [r.getMessage() for r in caplog.records]
    assert any("resolved as a prebuilt image" in m for m in messages)
    assert not any(m.startswith("building sandbox image") for m in messages)


def test_tagless_bare_name_is_used_when_local(prebuilt: str) -> None:
    with SandboxVectorEnv(TAGLESS, num_envs=2) as envs:
        assert envs._core.image == TAGLESS
        assert envs.reset(seed=0)[0].shape == (2, 4)


async def test_tagless_missing_image_is_never_pulled_or_built(caplog: pytest.LogCaptureFixture) -> None:
    # A tagless name that is no local image is a Gymnasium id, never an image to pull.
    caplog.set_level("INFO", logger="rlmesh")
    with pytest.raises(SandboxStartError) as err:
        async with AsyncSandboxEnv("rlmesh-test-no-such-image-xyz"):
            pass
    assert "rlmesh-test-no-such-image-xyz" in err.value.logs  # gymnasium's NameNotFound, from inside
    assert not any(r.getMessage().startswith("pulling") for r in caplog.records)
    assert any("resolved as a Gymnasium id" in r.getMessage() for r in caplog.records)


async def test_devices_volumes_and_user_reach_the_container(prebuilt: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    async with AsyncSandboxEnv(f"docker://{prebuilt}", devices=["/dev/null:/dev/probe-null:r"],
                               volumes=[f"{data}:/data:ro"], user="4321:4321") as env:
        await env.reset(seed=0)
        cfg = inspect(env.container_id)
        assert cfg["Config"]["User"] == "4321:4321"
        assert f"{data}:/data:ro" in cfg["HostConfig"]["Binds"]
        assert cfg["HostConfig"]["Devices"][0]["PathInContainer"] == "/dev/probe-null"
