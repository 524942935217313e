"""The shared-memory data plane with real sandboxes: runc containers share the host's region,
gVisor sandboxes (which cannot share the host's memory) keep the socket, both bit-identical."""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np

from rlmesh.numpy import SandboxEnv, SandboxVectorEnv

from .test_sandbox import _same


def _planes(env: Any) -> list[str]:
    core = env._core
    shards = getattr(core, "shards", [core])
    return [shard.connection.data_plane for shard in shards]


def _vector_parity(env: Any, ref: Any, steps: int) -> None:
    actions = copy.deepcopy(ref.action_space)
    actions.seed(11)
    _same(env.reset(seed=5), ref.reset(seed=5))
    kept = []
    ends = 0
    for _ in range(steps):
        action = actions.sample()
        got, want = env.step(action), ref.step(action)
        _same(got, want)
        kept.append((got[0], got[0].copy()))
        ends += int(np.sum(want[2] | want[3]))
    assert ends >= 5
    for obs, snapshot in kept:
        assert obs.tobytes() == snapshot.tobytes()


def test_sharded_sandboxes_share_memory_and_match_in_process() -> None:
    env = SandboxVectorEnv("CartPole-v1", num_envs=4, shards=2, autoreset_mode="same_step")
    try:
        planes = _planes(env)
        assert len(planes) == 2 and all(p.startswith("shared memory") for p in planes), planes
        ref = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync",
                           vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
        _vector_parity(env, ref, 300)
    finally:
        env.close()


def test_a_single_env_sandbox_shares_memory() -> None:
    env = SandboxEnv("CartPole-v1")
    try:
        assert _planes(env)[0].startswith("shared memory")
    finally:
        env.close()


def test_a_gvisor_sandbox_falls_back_to_the_socket() -> None:
    env = SandboxVectorEnv("CartPole-v1", num_envs=3, runtime="runsc")
    try:
        (plane,) = _planes(env)
        assert plane.startswith("socket (the server could not map the region") or plane.startswith(
            "socket (the server declined"), plane
        ref = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync")
        _vector_parity(env, ref, 200)
    finally:
        env.close()


def test_data_plane_socket_forces_the_socket_for_a_sandbox() -> None:
    env = SandboxVectorEnv("CartPole-v1", num_envs=3, shards=3, data_plane="socket")
    try:
        planes = _planes(env)
        assert len(planes) == 3 and not any(p.startswith("shared memory") for p in planes), planes
        _vector_parity(env, gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync"), 120)
        assert env.spec is not None and env.spec.kwargs["data_plane"] == "socket"
    finally:
        env.close()
