"""Layer 3: Gymnasium's vector semantics, with SyncVectorEnv as the oracle for every rlmesh class.

Each test runs against ``SyncVectorEnv`` itself and against ``RemoteVectorEnv`` serving the same
lanes (the sandboxed form is in tests/docker/test_vector_sandbox.py), with the same assertions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import SyncVectorEnv

from rlmesh import RemoteVectorEnv
from rlmesh.errors import RemoteEnvError

from ..envs import LENIENT_ID
from ..helpers import ServerThread

KINDS = ["gymnasium", "rlmesh-remote"]


def seeded(env_id: str, seed: int) -> Callable[[], gym.Env[Any, Any]]:
    """A lane whose action space and env are seeded at creation."""

    def make() -> gym.Env[Any, Any]:
        env = gym.make(env_id, disable_env_checker=True)
        env.action_space.seed(seed)
        env.reset(seed=seed)
        return env

    return make


@pytest.fixture(params=KINDS)
def vec(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Callable[..., Any]]:
    """``vec(env_fns) -> VectorEnv``: the oracle itself, or rlmesh serving the same lanes."""
    opened: list[Any] = []
    servers: list[ServerThread] = []

    def make(env_fns: list[Callable[[], gym.Env[Any, Any]]]) -> Any:
        if request.param == "gymnasium":
            env = SyncVectorEnv(env_fns)
        else:
            st = ServerThread(SyncVectorEnv(env_fns), f"unix://{tmp_path}/v{len(servers)}.sock").start()
            servers.append(st)
            env = RemoteVectorEnv(st.address)
        opened.append(env)
        return env

    yield make
    for env in opened:
        env.close()
    for st in servers:
        st.stop()


def test_get_attr_call_set_attr(vec: Callable[..., Any]) -> None:
    envs = vec([lambda: gym.make(LENIENT_ID, disable_env_checker=True) for _ in range(3)])
    assert envs.get_attr("gravity") == (9.8, 9.8, 9.8)
    assert envs.call("double_gravity", factor=3.0) == (9.8 * 3.0,) * 3
    envs.set_attr("gravity", [1.0, 2.0, 3.0])  # one value per lane
    assert envs.get_attr("gravity") == (1.0, 2.0, 3.0)
    envs.set_attr("gravity", 5.0)  # one value for all
    assert envs.get_attr("gravity") == (5.0, 5.0, 5.0)
    with pytest.raises(AttributeError):
        envs.get_attr("no_such_attribute")


def test_np_random_seed_is_per_lane(vec: Callable[..., Any]) -> None:
    envs = vec([lambda: gym.make("CartPole-v1", disable_env_checker=True) for _ in range(4)])
    envs.reset(seed=42)
    assert envs.np_random_seed == (42, 43, 44, 45)
    envs.reset(seed=[7, 8, 9, 10])
    assert envs.np_random_seed == (7, 8, 9, 10)


def test_seeded_action_spaces_sample_alike(tmp_path: Any) -> None:
    oracle = SyncVectorEnv([seeded("CartPole-v1", 123) for _ in range(3)])
    st = ServerThread(SyncVectorEnv([seeded("CartPole-v1", 123) for _ in range(3)]), f"unix://{tmp_path}/r.sock").start()
    try:
        with RemoteVectorEnv(st.address) as remote:
            for _ in range(50):
                assert np.array_equal(remote.action_space.sample(), oracle.action_space.sample())
                assert remote.single_action_space.sample() == oracle.single_action_space.sample()
    finally:
        st.stop()
        oracle.close()


def test_the_env_judges_actions(vec: Callable[..., Any]) -> None:
    envs = vec([lambda: gym.make(LENIENT_ID, disable_env_checker=True)])
    envs.reset(seed=0)
    obs, _, terminated, _, info = envs.step(np.array([4]))  # outside Discrete(4), and taken
    assert obs.tolist() == [0] and terminated.tolist() == [True] and info["action"].tolist() == [4]
    with pytest.raises(TypeError):
        envs.step(0)  # a scalar to a vector env, as Gymnasium says


def _raised(call: Callable[[], Any]) -> type[BaseException]:
    try:
        call()
    except Exception as exc:
        return type(exc)
    raise AssertionError("it did not raise")


def test_exceptions_keep_gymnasium_s_types(vec: Callable[..., Any]) -> None:
    def bad_mask() -> dict[str, Any]:  # the wrong shape for two lanes (a fresh dict: reset pops it)
        return {"reset_mask": np.array([True])}

    oracle = SyncVectorEnv([lambda: gym.make("CartPole-v1", disable_env_checker=True) for _ in range(2)])
    oracle.reset(seed=0)
    expected = _raised(lambda: oracle.reset(options=bad_mask()))  # AssertionError in 1.3, ValueError in 1.4
    oracle.close()
    envs = vec([lambda: gym.make("CartPole-v1", disable_env_checker=True) for _ in range(2)])
    envs.reset(seed=0)
    with pytest.raises(expected):
        envs.reset(options=bad_mask())
    envs.reset(seed=1)  # and the env goes on


def test_a_closed_remote_vector_env_is_gymnasium_s_closed_error(tmp_path: Any) -> None:
    # AsyncVectorEnv raises ClosedEnvironmentError after close(); so does every rlmesh env.
    st = ServerThread(SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(2)]), f"unix://{tmp_path}/a.sock").start()
    try:
        with RemoteVectorEnv(st.address) as envs:
            envs.reset(seed=0)
        with pytest.raises(gym.error.ClosedEnvironmentError):
            envs.reset(seed=0)
    finally:
        st.stop()


def test_a_remote_error_is_also_the_remote_type(tmp_path: Any) -> None:
    st = ServerThread(SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(2)]), f"unix://{tmp_path}/b.sock").start()
    try:
        with RemoteVectorEnv(st.address) as envs:
            envs.reset(seed=0)
            with pytest.raises(RemoteEnvError) as info:
                envs.reset(options={"reset_mask": np.array([True])})
            assert isinstance(info.value, (AssertionError, ValueError))
            assert "reset_mask" in info.value.remote_message
    finally:
        st.stop()


# --------------------------------------------------------------------------- custom spaces

def test_a_custom_space_crosses_as_an_opaque_space_the_server_answers(serve: Any) -> None:
    from rlmesh import RemoteEnv
    from rlmesh.protocol.spaces import OpaqueSpace

    from ..envs import CUSTOM_SPACE_ID, WordSpace

    with RemoteEnv(serve(gym.make(CUSTOM_SPACE_ID, disable_env_checker=True))) as env:
        mission = env.observation_space["mission"]
        assert isinstance(mission, OpaqueSpace) and mission.type_name == "tests.envs.WordSpace"
        assert isinstance(env.action_space, OpaqueSpace)
        obs, _ = env.reset(seed=0)
        assert obs["mission"] == WordSpace.WORDS[0] and mission.contains(obs["mission"])
        assert not mission.contains("not a word")
        env.action_space.seed(5)
        action = env.action_space.sample()
        local = WordSpace()
        local.seed(5)
        assert action == local.sample()  # drawn by the server's own space, seeded alike
        obs, *_ = env.step(action)
        assert obs["mission"] == action


def test_custom_spaces_are_batched_as_gymnasium_batches_them(vec: Callable[..., Any]) -> None:
    from ..envs import CUSTOM_SPACE_ID, WordSpace

    envs = vec([lambda: gym.make(CUSTOM_SPACE_ID, disable_env_checker=True) for _ in range(2)])
    assert isinstance(envs.action_space, gym.spaces.Tuple) and len(envs.action_space.spaces) == 2
    envs.reset(seed=0)
    actions = envs.action_space.sample()
    assert len(actions) == 2 and all(a in WordSpace.WORDS for a in actions)
    obs, *_ = envs.step(actions)
    assert tuple(obs["mission"]) == tuple(actions)


async def test_an_opaque_space_in_async_code_says_to_await(serve: Any) -> None:
    from rlmesh import AsyncRemoteEnv
    from rlmesh.errors import UnsupportedSpaceError

    from ..envs import CUSTOM_SPACE_ID, WordSpace

    async with AsyncRemoteEnv(serve(gym.make(CUSTOM_SPACE_ID, disable_env_checker=True))) as env:
        with pytest.raises(UnsupportedSpaceError, match="space_call"):
            env.action_space.sample()
        assert await env.space_call("action_space", [], "sample") in WordSpace.WORDS
