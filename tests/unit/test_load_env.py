"""load_env: the env a server serves, from a source and its options, made in process (no server, no socket)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from rlmesh.errors import InvalidArgumentError, SourceError
from rlmesh.server.loader import check_imports, load_env, namespace_module


def _first_obs(env: Any) -> Any:
    obs, _ = env.reset(seed=3)
    env.close()
    return obs


@pytest.mark.parametrize("source", ["CartPole-v1", "gym://CartPole-v1", "gymnasium.envs.classic_control:CartPole-v1"])
def test_a_gymnasium_id_makes_gymnasium_s_env(source: str) -> None:
    env = load_env(source, kwargs={"max_episode_steps": 7})
    assert isinstance(env, gym.Env) and env.spec is not None and env.spec.max_episode_steps == 7
    np.testing.assert_array_equal(_first_obs(env), _first_obs(gym.make("CartPole-v1")))


@pytest.mark.parametrize("source", ["gymnasium.envs.classic_control:CartPoleEnv",
                                    "py://gymnasium.envs.classic_control:CartPoleEnv"])
def test_a_factory_is_called_with_the_kwargs(source: str) -> None:
    env = load_env(source, kwargs={"render_mode": "rgb_array"})
    assert type(env).__name__ == "CartPoleEnv" and env.render_mode == "rgb_array"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_vector_env_of_a_factory_or_an_id_keeps_its_autoreset_mode(mode: str) -> None:
    for source in ("CartPole-v1", "gymnasium.envs.classic_control:CartPoleEnv"):
        envs = load_env(source, num_envs=2, vectorization_mode=mode, autoreset_mode="same_step")
        try:
            assert isinstance(envs, gym.vector.VectorEnv) and envs.num_envs == 2
            assert envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
            want = gym.vector.SyncVectorEnv if mode == "sync" else gym.vector.AsyncVectorEnv
            assert isinstance(envs, want)
        finally:
            envs.close()


def test_wrappers_wrap_each_lane_in_order() -> None:
    wrappers = [("gymnasium.wrappers:TimeLimit", {"max_episode_steps": 2}),
                ("gymnasium.wrappers:RecordEpisodeStatistics", {})]
    env = load_env("CartPole-v1", wrappers=wrappers)
    assert isinstance(env, gym.wrappers.RecordEpisodeStatistics)
    env.reset(seed=0)
    env.step(0)
    assert env.step(0)[3]  # truncated by the inner TimeLimit
    envs = load_env("CartPole-v1", num_envs=2, wrappers=wrappers)
    assert isinstance(envs, gym.vector.SyncVectorEnv)
    assert all(isinstance(e, gym.wrappers.RecordEpisodeStatistics) for e in envs.envs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_envs": 0}, InvalidArgumentError, "num_envs must be a positive int or None"),
        ({"num_envs": True}, InvalidArgumentError, "num_envs must be a positive int or None"),
        ({"vectorization_mode": "threads", "num_envs": 2}, InvalidArgumentError, "vectorization_mode"),
        ({"autoreset_mode": "sometimes"}, InvalidArgumentError, "autoreset_mode"),
        ({"selector": "suite/0"}, InvalidArgumentError, "envhub: sources only"),
        ({"num_envs": 2, "vectorization_mode": "vector",
          "wrappers": [("gymnasium.wrappers:TimeLimit", {})]}, InvalidArgumentError, "wrappers apply to single envs"),
    ],
)
def test_options_out_of_range_are_errors(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        load_env("CartPole-v1", **kwargs)


def test_a_factory_that_returns_no_env_is_a_source_error() -> None:
    with pytest.raises(SourceError, match="not a gymnasium.Env"):
        load_env("builtins:dict", num_envs=2)


def test_a_namespace_nothing_registered_names_what_to_add() -> None:
    # In a fresh interpreter: once any test in this process imported ale_py, ALE is registered here.
    code = textwrap.dedent("""
        import gymnasium as gym
        from rlmesh.server.loader import load_env
        try:
            load_env("ALE/Pong-v5")
        except gym.error.NamespaceNotFound as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert re.search(r"packages=\['ale-py'\], imports=\['ale_py'\]|imports=\['ale_py'\]", out), out
    assert namespace_module("RlmeshNoSuchNamespaceXyz") is None


def test_a_missing_import_is_named() -> None:
    check_imports(["json", "gymnasium"])
    with pytest.raises(SourceError, match="required import 'rlmesh_no_such_module_xyz' failed"):
        check_imports(["rlmesh_no_such_module_xyz"])
