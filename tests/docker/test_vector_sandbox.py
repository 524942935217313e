"""Gymnasium's vector semantics through SandboxVectorEnv, with SyncVectorEnv as the oracle."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import SyncVectorEnv

from rlmesh.numpy import SandboxVectorEnv

from .conftest import sandbox_containers


@pytest.fixture(scope="module")
def pair() -> tuple[SyncVectorEnv, SandboxVectorEnv]:
    oracle = SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(3)])
    sandbox = SandboxVectorEnv("CartPole-v1", num_envs=3)
    cid = sandbox.container_id
    yield oracle, sandbox
    sandbox.close()
    oracle.close()
    assert cid not in sandbox_containers()


@pytest.fixture(autouse=True)
def no_leaks() -> None:
    """The module-scoped sandbox lives across these tests; the leak check runs at its close."""


def test_attributes_calls_and_seeds_match(pair: tuple[SyncVectorEnv, SandboxVectorEnv]) -> None:
    oracle, sandbox = pair
    for envs in pair:
        envs.reset(seed=42)
    assert sandbox.np_random_seed == oracle.np_random_seed == (42, 43, 44)
    assert sandbox.get_attr("gravity") == oracle.get_attr("gravity")
    for envs in pair:
        envs.set_attr("gravity", [1.0, 2.0, 3.0])
    assert sandbox.get_attr("gravity") == oracle.get_attr("gravity") == (1.0, 2.0, 3.0)
    assert sandbox.call("get_wrapper_attr", "tau") == oracle.call("get_wrapper_attr", "tau")
    for envs in pair:
        envs.set_attr("gravity", 9.8)


def test_errors_match(pair: tuple[SyncVectorEnv, SandboxVectorEnv]) -> None:
    oracle, sandbox = pair
    oracle.reset(seed=0)
    sandbox.reset(seed=0)
    try:
        oracle.reset(options={"reset_mask": np.array([True])})
    except Exception as exc:
        expected = type(exc)
    with pytest.raises(expected):
        sandbox.reset(options={"reset_mask": np.array([True])})
    with pytest.raises(TypeError):
        sandbox.step(0)
