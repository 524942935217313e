"""Specs that round-trip: gym.make(env.spec), gym.make_vec(envs.spec), gym.register with rlmesh's classes."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from rlmesh.numpy import SandboxEnv, SandboxVectorEnv

from .conftest import sandbox_containers


def _steps(env: gym.Env, n: int = 30) -> list[np.ndarray]:  # type: ignore[type-arg]
    obs, _ = env.reset(seed=5)
    out = [obs]
    for t in range(n):
        obs, _, terminated, truncated, _ = env.step(t % 2)
        out.append(obs)
        if terminated or truncated:
            out.append(env.reset()[0])
    return out


def test_gym_make_of_a_sandbox_spec_makes_an_equivalent_sandbox() -> None:
    with SandboxEnv("CartPole-v1", memory="1g", sutton_barto_reward=True) as env:
        spec = env.spec
        assert spec is not None and spec.entry_point == "rlmesh:SandboxEnv"
        assert spec.kwargs == {"source": "CartPole-v1", "memory": "1g", "env_kwargs": {"sutton_barto_reward": True}}
        assert spec.max_episode_steps == 500 and spec.id == "CartPole-v1"
        again = gym.make(spec)
        try:
            inner = again.unwrapped
            assert isinstance(inner, SandboxEnv) and inner.container_id != env.container_id
            assert inner.spec is not None and inner.spec.kwargs == spec.kwargs
            assert all(np.array_equal(a, b) for a, b in zip(_steps(env), _steps(again), strict=True))
        finally:
            again.close()
    assert not {env.container_id, inner.container_id} & sandbox_containers()


def test_gym_make_vec_of_a_sandbox_vector_spec() -> None:
    with SandboxVectorEnv("CartPole-v1", num_envs=2, autoreset_mode="same_step") as envs:
        spec = envs.spec
        assert spec is not None and spec.vector_entry_point == "rlmesh:SandboxVectorEnv"
        again = gym.make_vec(spec, num_envs=3)
        try:
            assert isinstance(again, SandboxVectorEnv) and again.num_envs == 3
            assert again.metadata["autoreset_mode"] is gym.vector.AutoresetMode.SAME_STEP
            obs, _ = again.reset(seed=1)
            assert obs.shape == (3, 4)
        finally:
            again.close()


def test_gym_make_vec_sync_of_a_sandbox_spec_is_a_sync_vector_env_of_sandboxes() -> None:
    with SandboxEnv("CartPole-v1") as env:
        spec = env.spec
    envs = gym.make_vec(spec, num_envs=2, vectorization_mode="sync")
    try:
        assert isinstance(envs, gym.vector.SyncVectorEnv)
        assert all(isinstance(e.unwrapped, SandboxEnv) for e in envs.envs)
        ref = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")
        got, want = envs.reset(seed=4), ref.reset(seed=4)
        assert np.array_equal(got[0], want[0])
        for t in range(40):
            actions = np.array([t % 2, (t // 3) % 2])
            assert all(np.array_equal(a, b) for a, b in zip(envs.step(actions)[:4], ref.step(actions)[:4], strict=True))
    finally:
        envs.close()


def test_a_sandbox_registered_as_a_gymnasium_id() -> None:
    gym.register("rlmesh-test/SandboxedCartPole-v0", entry_point="rlmesh:SandboxEnv",
                 kwargs={"source": "CartPole-v1"}, max_episode_steps=20)
    try:
        env = gym.make("rlmesh-test/SandboxedCartPole-v0")
        try:
            env.reset(seed=0)
            steps = 0
            while True:
                _, _, terminated, truncated, _ = env.step(steps % 2)
                steps += 1
                if terminated or truncated:
                    break
            assert steps <= 20
        finally:
            env.close()
    finally:
        gym.registry.pop("rlmesh-test/SandboxedCartPole-v0")
