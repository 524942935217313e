"""Sharded sandboxes: K containers, one vector env, the semantics of one SyncVectorEnv of N lanes."""

from __future__ import annotations

import subprocess

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from rlmesh.errors import SandboxExitedError
from rlmesh.numpy import AsyncSandboxVectorEnv, SandboxVectorEnv

from ..helpers import assert_same, assert_same_steps
from .conftest import sandbox_containers


@pytest.mark.parametrize(("num_envs", "shards"), [(5, 1), (5, 2), (7, 3)], ids=["5x1", "5x2", "7x3"])
def test_sharded_sandbox_equals_one_sync_vector_env(num_envs: int, shards: int) -> None:
    mode = AutoresetMode.SAME_STEP if shards == 2 else AutoresetMode.NEXT_STEP
    ref = gym.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode})
    envs = SandboxVectorEnv("CartPole-v1", num_envs=num_envs, shards=shards, autoreset_mode=mode.name.lower())
    try:
        ids = envs.container_ids
        assert len(ids) == shards and len(set(ids)) == shards and set(ids) <= sandbox_containers()
        assert_same(envs.reset(seed=3), ref.reset(seed=3))
        assert assert_same_steps(envs, ref, 300, action_seed=4) >= 10
    finally:
        envs.close()
    assert not set(ids) & sandbox_containers()


async def test_a_killed_shard_is_named() -> None:
    async with AsyncSandboxVectorEnv("CartPole-v1", num_envs=4, shards=2) as envs:
        await envs.reset(seed=0)
        subprocess.run(["docker", "kill", envs.container_ids[1]], check=True, capture_output=True)
        with pytest.raises(SandboxExitedError) as info:
            await envs.step(np.zeros(4, dtype=np.int64))
        assert info.value.shard == 1 and info.value.lanes == (2, 4)  # type: ignore[attr-defined]
        assert "shard 1, lanes 2..3" in "".join(info.value.__notes__)


@pytest.mark.parametrize("shards", [1, 2])
async def test_a_sandbox_killed_between_step_async_and_step_wait(shards: int) -> None:
    async with AsyncSandboxVectorEnv("CartPole-v1", num_envs=2, shards=shards) as envs:
        await envs.reset(seed=0)
        victim = envs.container_ids[-1] if shards > 1 else envs.container_id
        await envs.step_async(np.zeros(2, dtype=np.int64))
        await envs.step_wait()
        subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
        with pytest.raises(SandboxExitedError) as info:
            await envs.step_async(np.zeros(2, dtype=np.int64))
            await envs.step_wait()
        assert info.value.exit_code == 137 and "docker kill" in str(info.value)
