"""Sandbox constructor arguments: misplaced, misspelled and malformed options fail on the host.

Making an ``AsyncSandboxEnv`` starts nothing, so everything here runs without an engine.
"""

from __future__ import annotations

from typing import Any, cast

import pytest

from rlmesh.errors import InvalidArgumentError
from rlmesh.numpy import AsyncSandboxEnv, AsyncSandboxVectorEnv, SandboxEnv, SandboxVectorEnv
from rlmesh.sandbox.env import check_single_env_options
from rlmesh.sandbox.placement import RayPlacement

IMAGE = "rlmesh-test/prebuilt-cartpole:1"


def test_a_misspelled_option_is_caught_on_the_host() -> None:
    with pytest.raises(InvalidArgumentError, match="did you mean packages="):
        SandboxEnv("CartPole-v1", package=["gymnasium"])
    with pytest.raises(InvalidArgumentError, match="did you mean num_envs="):
        SandboxVectorEnv("CartPole-v1", num_env=2)
    env = AsyncSandboxEnv("CartPole-v1", env_kwargs={"package": 1})  # deliberately: passed through
    assert env.env_kwargs == {"package": 1}


def test_misplaced_options_are_errors_not_env_kwargs() -> None:
    with pytest.raises(InvalidArgumentError, match="for a vector env use AsyncSandboxVectorEnv"):
        AsyncSandboxEnv("CartPole-v1", num_envs=4)
    with pytest.raises(InvalidArgumentError, match="for a vector env use AsyncSandboxVectorEnv"):
        AsyncSandboxEnv("CartPole-v1", autoreset_mode="same_step")
    with pytest.raises(InvalidArgumentError, match="RemoteEnv"):
        AsyncSandboxEnv("CartPole-v1", address="unix:///tmp/x.sock")
    with pytest.raises(InvalidArgumentError, match="env="):
        AsyncSandboxEnv("CartPole-v1", environment={"A": "1"})
    with pytest.raises(InvalidArgumentError, match="vectorization_mode"):
        AsyncSandboxVectorEnv("CartPole-v1", 2, vectorization_mode="threads")


def test_build_options_on_a_prebuilt_image_say_where_they_belong() -> None:
    for kwargs in ({"packages": ["gymnasium"]}, {"base_image": "x:1"}, {"rebuild": True}):
        with pytest.raises(InvalidArgumentError, match="applies to images rlmesh builds"):
            AsyncSandboxEnv(f"docker://{IMAGE}", **kwargs)


@pytest.mark.parametrize(
    ("called", "kwargs", "vector"),
    [("SandboxEnv", {"num_envs": 3}, "SandboxVectorEnv(1, num_envs=3)"),
     ("AsyncSandboxEnv", {"vectorization_mode": "async"}, "AsyncSandboxVectorEnv(1, num_envs=4)")],
)
def test_single_env_options_name_the_vector_class(called: str, kwargs: dict[str, Any], vector: str) -> None:
    with pytest.raises(InvalidArgumentError, match=rf"{called} runs a single env") as info:
        check_single_env_options(called, 1, kwargs)
    assert vector in str(info.value)
    check_single_env_options(called, 1, {"render_mode": "rgb_array"})  # env kwargs pass


@pytest.mark.parametrize("num_envs", [0, -1, True, 2.0, "2"])
def test_num_envs_must_be_a_positive_int(num_envs: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="num_envs must be a positive int"):
        AsyncSandboxVectorEnv("CartPole-v1", num_envs)


@pytest.mark.parametrize("lease", [0, -1.0, True, "60", float("nan")])
def test_lease_must_be_a_positive_number(lease: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="lease must be a positive number"):
        AsyncSandboxEnv("CartPole-v1", lease=lease)


@pytest.mark.parametrize(
    ("wrappers", "match"),
    [("gymnasium.wrappers:TimeLimit", "must be a list"),
     (["not a path"], "module:Class"),
     ([("gymnasium.wrappers:TimeLimit", {"x": object()})], "JSON-serialisable"),
     ([("gymnasium.wrappers:TimeLimit", 3)], "module:Class")],
)
def test_wrappers_are_checked_for_form(wrappers: Any, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        AsyncSandboxEnv("CartPole-v1", wrappers=wrappers)


def test_wrappers_take_their_wire_form() -> None:
    env = AsyncSandboxEnv("CartPole-v1", wrappers=["gymnasium.wrappers:RecordEpisodeStatistics",
                                                   ("gymnasium.wrappers:TimeLimit", {"max_episode_steps": 5})])
    assert env.wrappers == [["gymnasium.wrappers:RecordEpisodeStatistics", {}],
                            ["gymnasium.wrappers:TimeLimit", {"max_episode_steps": 5}]]


def test_env_kwargs_must_reach_the_sandbox_as_json() -> None:
    with pytest.raises(InvalidArgumentError, match="JSON-serialisable"):
        AsyncSandboxEnv("CartPole-v1", render_mode=object())
    with pytest.raises(InvalidArgumentError, match="env_kwargs must map names"):
        AsyncSandboxEnv("CartPole-v1", env_kwargs=cast(Any, [("a", 1)]))
    with pytest.raises(InvalidArgumentError, match="packages must be a list of strings"):
        AsyncSandboxEnv("CartPole-v1", packages="gymnasium")


def test_the_spec_keeps_only_options_that_differ_from_their_defaults() -> None:
    env = AsyncSandboxEnv("CartPole-v1", memory="2g", network=False, render_mode="rgb_array")
    assert env._spec_kwargs() == {"source": "CartPole-v1", "memory": "2g", "env_kwargs": {"render_mode": "rgb_array"}}
    envs = AsyncSandboxVectorEnv("CartPole-v1", 3, autoreset_mode="same_step", cpus=1.5)
    assert envs.shards[0]._spec_kwargs() == {"source": "CartPole-v1", "cpus": 1.5, "autoreset_mode": "same_step"}


def test_placement_is_local_ray_or_a_ray_placement() -> None:
    assert RayPlacement.of(None) is None and RayPlacement.of("local") is None
    assert RayPlacement.of("ray") == RayPlacement()
    custom = RayPlacement(num_cpus=2.0, spread=False)
    assert RayPlacement.of(custom) is custom
    with pytest.raises(InvalidArgumentError, match="placement must be 'local', 'ray' or a RayPlacement"):
        RayPlacement.of("kubernetes")
