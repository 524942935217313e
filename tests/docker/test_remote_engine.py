"""Sandboxes on another Docker engine (a second real dockerd on loopback TCP), through a relay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from rlmesh import RemoteEnv
from rlmesh.errors import AuthenticationError, SandboxExitedError
from rlmesh.numpy import SandboxEnv, SandboxVectorEnv

from .conftest import sandbox_containers

REPO = Path(__file__).resolve().parents[2]


def _on(host: str, *args: str) -> str:
    return subprocess.run(["docker", "-H", host, *args], capture_output=True, text=True, check=True).stdout


def _labelled(host: str) -> set[str]:
    return set(_on(host, "ps", "-aq", "--no-trunc", "--filter", "label=rlmesh.sandbox").split())


def test_a_sandbox_on_another_engine_builds_and_runs_there(second_engine: str) -> None:
    here_before = sandbox_containers(ours=True)
    volumes_before = set(_on(second_engine, "volume", "ls", "-q").split())
    env = SandboxEnv("CartPole-v1", docker_host=second_engine)
    try:
        cid = env.container_id
        assert cid is not None and cid in _labelled(second_engine) and cid not in sandbox_containers(ours=True)
        assert len(_labelled(second_engine)) == 2  # the env and its relay
        inside = json.loads(_on(second_engine, "inspect", cid))[0]
        assert inside["HostConfig"]["NetworkMode"] == "none" and inside["Config"]["User"] != "0"
        assert env._core.address.startswith("tcp://127.0.0.1:")
        ref = gym.make("CartPole-v1")
        obs, _ = env.reset(seed=8)
        assert np.array_equal(obs, ref.reset(seed=8)[0])
        for t in range(50):
            got, want = env.step(t % 2), ref.step(t % 2)
            assert np.array_equal(got[0], want[0]) and got[1:4] == want[1:4]
            if got[2] or got[3]:
                assert np.array_equal(env.reset()[0], ref.reset()[0])
        # The relay's port is open to anyone who can reach it: only the token gets in.
        with pytest.raises(AuthenticationError, match="requires a token"):
            RemoteEnv(env._core.address, token=None, connect_timeout=10)
        with pytest.raises(AuthenticationError):
            RemoteEnv(env._core.address, token="not-the-sandbox-token-at-all", connect_timeout=10)
    finally:
        env.close()
    assert not _labelled(second_engine)
    assert set(_on(second_engine, "volume", "ls", "-q").split()) <= volumes_before
    assert sandbox_containers(ours=True) == here_before


def test_a_relayed_vector_sandbox_on_this_engine(second_engine: str) -> None:
    before = sandbox_containers(ours=True)
    with SandboxVectorEnv("CartPole-v1", num_envs=3, transport="tcp") as envs:
        sandbox = envs._core.shards[0]._sandbox
        relay = json.loads(subprocess.run(["docker", "inspect", sandbox.relay_id], capture_output=True, text=True,
                                          check=True).stdout)[0]
        assert "--handoff" in relay["Config"]["Cmd"]  # it hands clients to the server, then steps aside
        ref = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync")
        obs, _ = envs.reset(seed=1)
        assert np.array_equal(obs, ref.reset(seed=1)[0])
        a = np.array([0, 1, 0])
        assert np.array_equal(envs.step(a)[0], ref.step(a)[0])
        # The server killed: its relay sees the end of its handoff channel and stops at once
        # (not after its lease), and the step says the sandbox is gone.
        subprocess.run(["docker", "kill", envs.container_id], capture_output=True, check=True)
        deadline = time.monotonic() + 20
        while sandbox.relay_id in sandbox_containers(ours=True) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sandbox.relay_id not in sandbox_containers(ours=True)
        with pytest.raises(SandboxExitedError):
            envs.step(a)
    assert sandbox_containers(ours=True) == before


def test_a_killed_owner_s_remote_sandbox_ends_by_its_lease(second_engine: str) -> None:
    code = textwrap.dedent(f"""
        import os, signal
        from rlmesh.numpy import SandboxEnv
        env = SandboxEnv("CartPole-v1", docker_host={second_engine!r}, lease=2)
        env.reset(seed=0)
        print(env.container_id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout.strip(), result.stderr
    deadline = time.monotonic() + 60  # the server's lease, then the relay's
    while _labelled(second_engine) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _labelled(second_engine)
