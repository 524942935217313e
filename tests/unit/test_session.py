"""The handshake state machines of rlmesh.protocol.session, both sides, with no socket: bytes in, bytes out."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import pytest

from rlmesh.errors import AuthenticationError, ConnectionClosedError, InvalidArgumentError, ProtocolError, ServerBusyError
from rlmesh.protocol import (
    AuthProof,
    Connection,
    ErrorBody,
    Frame,
    MessageType,
    ServerHello,
    encode_message,
    exception_for_error,
)
from rlmesh.protocol.session import ClientHandshake, ServerHandshake, ServerHandshakeState

TOKEN = b"t" * 32


def _frames(data: bytes) -> list[Frame]:
    return Connection(1 << 24).receive_data(data)


def _one(data: bytes) -> Frame:
    (frame,) = _frames(data)
    return frame


def _hello_parts() -> Any:
    env = gym.make("CartPole-v1")
    return ServerHello(vector=False, num_envs=None, observation_space=env.observation_space,
                       action_space=env.action_space, single_observation_space=None, single_action_space=None,
                       metadata={}, render_mode=None, spec=None, autoreset_mode=None).encode_parts()


def _run(client: ClientHandshake, server: ServerHandshake) -> ServerHello:
    """Drive both sides until the client holds the server's HELLO (or one side raises)."""
    server.receive(_one(client.hello().encode(1)))
    if server.state is ServerHandshakeState.AUTH:
        step = client.receive(_one(server.challenge()))
        assert isinstance(step, AuthProof)
        server.receive(_one(step.encode(2)))
    assert server.state is ServerHandshakeState.DONE
    hello = client.receive(_one(server.accept(_hello_parts())))
    assert isinstance(hello, ServerHello)
    return hello


def test_without_a_token_the_server_answers_the_hello_at_once() -> None:
    hello = _run(ClientHandshake("unix:///x", 1 << 20, None, False), ServerHandshake(None))
    assert hello.action_space == gym.spaces.Discrete(2)


def test_with_the_same_token_both_sides_prove_it() -> None:
    server = ServerHandshake(TOKEN)
    _run(ClientHandshake("tcp://h:1", 1 << 20, TOKEN, True), server)
    assert server.reply_id == 2  # the HELLO answers the proof


def test_a_wrong_token_fails_on_the_server() -> None:
    with pytest.raises(AuthenticationError, match="does not match"):
        _run(ClientHandshake("tcp://h:1", 1 << 20, b"x" * 32, True), ServerHandshake(TOKEN))


def test_a_client_without_a_token_is_told_to_pass_one() -> None:
    client, server = ClientHandshake("tcp://h:1", 1 << 20, None, False), ServerHandshake(TOKEN)
    server.receive(_one(client.hello().encode(1)))
    with pytest.raises(AuthenticationError, match="requires a token"):
        client.receive(_one(server.challenge()))


def test_a_server_that_cannot_prove_the_token_is_refused() -> None:
    client = ClientHandshake("tcp://h:1", 1 << 20, TOKEN, True)
    impostor = ServerHandshake(b"i" * 32)
    impostor.receive(_one(client.hello().encode(1)))
    proof = client.receive(_one(impostor.challenge()))
    assert isinstance(proof, AuthProof)
    impostor._token = TOKEN  # it accepts anything...
    impostor.state = ServerHandshakeState.DONE
    impostor._token = b"i" * 32  # ...but proves with its own token
    with pytest.raises(AuthenticationError, match="could not prove"):
        client.receive(_one(impostor.accept(_hello_parts())))


def test_a_client_that_gave_a_token_refuses_a_server_without_one() -> None:
    client, server = ClientHandshake("tcp://h:1", 1 << 20, TOKEN, True), ServerHandshake(None)
    server.receive(_one(client.hello().encode(1)))
    with pytest.raises(AuthenticationError, match="did not authenticate"):
        client.receive(_one(server.accept(_hello_parts())))


def test_frames_out_of_order_are_protocol_errors() -> None:
    server = ServerHandshake(TOKEN)
    with pytest.raises(ProtocolError, match="expected HELLO"):
        server.receive(_one(AuthProof("00" * 32).encode(1)))
    client = ClientHandshake("tcp://h:1", 1 << 20, TOKEN, True)
    server.receive(_one(client.hello().encode(1)))
    with pytest.raises(ProtocolError, match="expected AUTH"):
        server.receive(_one(client.hello().encode(2)))
    with pytest.raises(ProtocolError, match="malformed AUTH challenge"):
        client.receive(_one(AuthProof("00" * 32).encode(1)))  # an AUTH proof is no challenge
    with pytest.raises(ProtocolError, match="expected HELLO from the server"):
        client.receive(_one(encode_message(MessageType.STEP, 1, 0)))
    done = ServerHandshake(None)
    done.receive(_one(client.hello().encode(1)))
    with pytest.raises(ProtocolError, match="once the handshake is done"):
        done.receive(_one(client.hello().encode(2)))


def test_a_second_challenge_is_a_protocol_error() -> None:
    client, server = ClientHandshake("tcp://h:1", 1 << 20, TOKEN, True), ServerHandshake(TOKEN)
    server.receive(_one(client.hello().encode(1)))
    client.receive(_one(server.challenge()))
    with pytest.raises(ProtocolError):
        client.receive(_one(server.challenge()))


@pytest.mark.parametrize("body, error", [
    (ErrorBody.busy("full"), ServerBusyError),
    (ErrorBody.bad_request("no"), InvalidArgumentError),
    (ErrorBody.closing("protocol", "bad"), ProtocolError),
    (ErrorBody.closing("auth", "wrong token"), AuthenticationError),
    (ErrorBody.closing("idle", "too quiet"), ConnectionClosedError),
])
def test_error_constructors_give_the_exception_the_client_raises(body: ErrorBody, error: type[Exception]) -> None:
    frame = _one(body.encode(0))
    assert frame.type is MessageType.ERROR
    decoded = ErrorBody.decode(frame)
    assert decoded == body and decoded.type == error.__name__  # the type field names the exception, not the kind
    assert isinstance(exception_for_error(decoded), error)
    client = ClientHandshake("tcp://h:1", 1 << 20, None, False)
    with pytest.raises(error):
        client.receive(frame)


def test_a_client_hello_carries_a_render_mode_only_when_asked() -> None:
    from rlmesh.protocol.messages import ClientHello

    plain = ClientHandshake("unix:///x.sock", 1 << 20, None, False).hello()
    assert plain.render_mode is None and b"render_mode" not in plain.encode(1)
    asked = ClientHandshake("unix:///x.sock", 1 << 20, None, False, render_mode="rgb_array").hello()
    assert ClientHello.decode(_one(asked.encode(1))).render_mode == "rgb_array"


@pytest.mark.parametrize("mode", ["", "x" * 65, "rgb array", "a/b", 7, ["rgb_array"]])
def test_a_hostile_render_mode_in_a_hello_is_a_protocol_error(mode: Any) -> None:
    from rlmesh.protocol.messages import ClientHello

    hello = ClientHandshake("unix:///x.sock", 1 << 20, None, False).hello()
    body = {"version": hello.version, "nonce": hello.nonce, "max_frame_size": hello.max_frame_size, "render_mode": mode}
    with pytest.raises(ProtocolError, match="render_mode"):
        ClientHello.decode(_one(encode_message(MessageType.HELLO, 1, body)))
