"""Sandboxes under gVisor (``runtime="runsc"``): everything a sandbox promises, under a user-space kernel.

``scripts/dev setup`` installs Debian's runsc and registers it with the engine; these tests fail
(never skip) when it is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from rlmesh.errors import SandboxExitedError
from rlmesh.numpy import AsyncSandboxEnv, SandboxEnv, SandboxVectorEnv

from .conftest import PROBE_PKG, inspect, sandbox_containers
from .test_sandbox import _same

REPO = Path(__file__).resolve().parents[2]
PROBE = "rlmesh_probe:make_probe"


@pytest.fixture(scope="module", autouse=True)
def _runsc_registered() -> None:
    out = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True)
    if '"runsc"' not in out.stdout:
        pytest.fail("the engine has no runsc runtime: run ./scripts/dev setup (it installs and registers gVisor)")


def _trajectory(env: Any, ref: Any, steps: int, vector: bool) -> int:
    _same(env.reset(seed=3), ref.reset(seed=3))
    rng = np.random.default_rng(7)
    episodes = 0
    for _ in range(steps):
        action = rng.integers(2, size=ref.num_envs) if vector else int(rng.integers(2))
        got, want = env.step(action), ref.step(action)
        _same(got, want)
        if vector:
            episodes += int(np.sum(got[2] | got[3]))
        elif got[2] or got[3]:
            episodes += 1
            _same(env.reset(), ref.reset())
    return episodes


def test_single_env_parity_under_gvisor() -> None:
    env = SandboxEnv("CartPole-v1", runtime="runsc")
    try:
        assert inspect(env.container_id)["HostConfig"]["Runtime"] == "runsc"
        assert _trajectory(env, gym.make("CartPole-v1"), 300, vector=False) >= 5  # autoresets included
    finally:
        env.close()


def test_a_gvisor_sandbox_through_a_relay_forwards_bytes() -> None:
    # gVisor cannot receive a host descriptor, so its relay forwards bytes instead of handing over.
    env = SandboxEnv("CartPole-v1", runtime="runsc", transport="tcp")
    try:
        relay = inspect(env._core._sandbox.relay_id)
        assert "--upstream" in relay["Config"]["Cmd"] and "--handoff" not in relay["Config"]["Cmd"]
        assert _trajectory(env, gym.make("CartPole-v1"), 100, vector=False) >= 2
    finally:
        env.close()


def test_vector_env_parity_under_gvisor() -> None:
    envs = SandboxVectorEnv("CartPole-v1", num_envs=3, runtime="runsc")
    try:
        ref = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync")
        assert _trajectory(envs, ref, 300, vector=True) >= 10
    finally:
        envs.close()


async def test_the_env_sees_gvisor_no_network_and_the_sandbox_hardening() -> None:
    async with AsyncSandboxEnv(PROBE, packages=[PROBE_PKG], runtime="runsc") as env:
        _, info = await env.reset(seed=0)
        assert await env.call("kernel") != os.uname().release  # gVisor's kernel, not the host's
        assert info["interfaces"] == ["lo"] and info["uid"] != 0 and info["root_writable"] is False
        for point, fstype, options in await env.call("writable_mounts"):
            assert fstype == "tmpfs" and "size=" in options, (point, fstype, options)
        host = inspect(env.container_id)["HostConfig"]
        assert host["PidsLimit"] == 1024 and host["Memory"] >= 1 << 30 and host["NetworkMode"] == "none"


async def test_a_memory_bomb_and_a_kill_under_gvisor() -> None:
    async with AsyncSandboxEnv(PROBE, packages=[PROBE_PKG], runtime="runsc", memory="256m") as env:
        await env.reset(seed=0)
        with pytest.raises(SandboxExitedError) as info:
            await env.call("memory_bomb")
        assert info.value.oom_killed and info.value.exit_code == 137
    async with AsyncSandboxEnv(PROBE, packages=[PROBE_PKG], runtime="runsc") as env:
        await env.reset(seed=0)
        subprocess.run(["docker", "kill", env.container_id], check=True, capture_output=True)
        with pytest.raises(SandboxExitedError) as info:
            await env.step(0)
        assert info.value.exit_code == 137 and not info.value.oom_killed


def test_a_killed_owner_s_gvisor_sandbox_ends_by_itself() -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import os, signal
            from rlmesh.numpy import SandboxEnv
            env = SandboxEnv("CartPole-v1", runtime="runsc")
            print(env.container_id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        """)],
        cwd=REPO, capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    cid = result.stdout.strip()
    assert cid, result.stderr
    deadline = time.monotonic() + 15
    while cid in sandbox_containers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cid not in sandbox_containers()
    subprocess.run([sys.executable, "-m", "rlmesh", "sandbox", "cleanup"], capture_output=True, cwd=REPO)
