"""rlmesh.server.dispatch with no socket: a request frame in, the reply's bytes out, checked against
the in-process env (the oracle)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from rlmesh.errors import ProtocolError
from rlmesh.protocol import (
    CallRequest,
    Connection,
    ErrorBody,
    Frame,
    MessageType,
    ResetRequest,
    ServerHello,
    decode_reset_reply,
    decode_step_reply,
    encode_message,
)
from rlmesh.server.dispatch import describe, handle


def _frame(data: bytes) -> Frame:
    (frame,) = Connection(1 << 26).receive_data(data)
    return frame


def _ask(env: Any, data: bytes, limit: int = 1 << 26) -> Frame:
    return _frame(handle(env, _frame(data), limit))


def test_reset_and_step_give_what_the_env_gives() -> None:
    env, oracle = gym.make("CartPole-v1"), gym.make("CartPole-v1")
    obs, info = decode_reset_reply(_ask(env, ResetRequest(7, None).encode(1)))
    want_obs, want_info = oracle.reset(seed=7)
    assert np.array_equal(obs, want_obs) and info == want_info
    for t in range(20):
        got = decode_step_reply(_ask(env, encode_message(MessageType.STEP, 2 + t, t % 2)), None)
        want = oracle.step(t % 2)
        assert np.array_equal(got[0], want[0]) and got[1:4] == want[1:4]


def test_an_env_error_is_an_error_reply_and_the_connection_goes_on() -> None:
    env = gym.make("CartPole-v1")
    reply = _ask(env, encode_message(MessageType.STEP, 3, 0))  # a step before any reset
    assert reply.type is MessageType.ERROR and reply.request_id == 3
    assert ErrorBody.decode(reply).kind == "env"
    reply = _ask(env, CallRequest("get_attr", "no_such_attribute", (), {}).encode(4))
    assert ErrorBody.decode(reply).kind == "env"


class _BigFrames(gym.Env[Any, Any]):
    """Renders 256 KiB frames (needing no pygame, on every Gymnasium version)."""

    observation_space = gym.spaces.Discrete(2)
    action_space = gym.spaces.Discrete(2)
    render_mode = "rgb_array"

    def render(self) -> Any:
        return np.zeros((256, 256, 4), np.uint8)


def test_a_reply_over_the_client_s_limit_is_refused_with_a_hint() -> None:
    env = _BigFrames()
    reply = _ask(env, encode_message(MessageType.RENDER, 5, None), limit=1 << 16)
    body = ErrorBody.decode(reply)
    assert body.kind == "bad_request" and "raise max_frame_size" in body.message


@pytest.mark.parametrize("mtype", [MessageType.HELLO, MessageType.AUTH, MessageType.STEP_SHARED])
def test_a_request_no_active_client_may_send_is_a_protocol_error(mtype: MessageType) -> None:
    with pytest.raises(ProtocolError):
        handle(gym.make("CartPole-v1"), _frame(encode_message(mtype, 1, {})), 1 << 26)


def test_describe_is_the_env_s_hello() -> None:
    vec = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync")
    hello = ServerHello.decode(_frame(ServerHello.frame(describe(vec, data_plane=True).encode_parts(), 1, None)))
    assert hello.vector and hello.num_envs == 3 and hello.autoreset_mode == "NextStep"
    assert hello.single_action_space == vec.single_action_space and hello.features
    single = describe(gym.make("CartPole-v1"))
    assert not single.vector and single.num_envs is None and not single.features
