"""The handshake, both sides, sans-I/O: which message comes next, and what each one proves.

A session starts with the client's HELLO. A server with a token answers with an AUTH
challenge, the client proves it knows the token (AUTH), and the server's HELLO proves in turn
that the server knows it; a server without a token answers the HELLO with its own at once.

:class:`ClientHandshake` and :class:`ServerHandshake` take frames and give what to send (or
the outcome); the connections (:mod:`rlmesh.client.connection`, :mod:`rlmesh.server.core`)
only move bytes and decide when. Both are testable without a socket.
"""

from __future__ import annotations

import enum
from typing import Any

import numpy as np

from ..errors import AuthenticationError, ProtocolError
from . import auth as _auth
from .faults import ErrorBody, exception_for_error
from .framing import PROTOCOL_VERSION, Frame, MessageType
from .messages import AuthChallenge, AuthProof, ClientHello, ServerHello

__all__ = ["ClientHandshake", "ServerHandshake", "ServerHandshakeState"]


class ClientHandshake:
    """The client's side: :meth:`hello` to send, then :meth:`receive` each reply.

    Args:
        address: The server's address (for messages).
        max_frame_size: The largest frame the client accepts (sent in its HELLO).
        token: The shared token, if any.
        require_auth: Refuse a server that does not prove it knows ``token``.
        render_mode: The render mode asked of the server's env (None: the server's own).
    """

    def __init__(self, address: str, max_frame_size: int, token: bytes | None, require_auth: bool,
                 render_mode: str | None = None) -> None:
        self.address = address
        self._render_mode = render_mode
        self.nonce = _auth.new_nonce()
        self._max_frame_size = max_frame_size
        self._token = token
        self._require_auth = require_auth
        self._expected_proof: str | None = None
        self._challenged = False

    def hello(self) -> ClientHello:
        """The first message."""
        return ClientHello(PROTOCOL_VERSION, self.nonce, self._max_frame_size, self._render_mode)

    def receive(self, frame: Frame) -> AuthProof | ServerHello:
        """The next message to send (an :class:`AuthProof`), or the server's accepted HELLO.

        Raises:
            AuthenticationError: A token is needed and none was given, the server could not
                prove it knows the token, or it did not authenticate though a token was given.
            ProtocolError: A reply out of order, or malformed.
            RLMeshError: The server's ERROR (busy, a failed start ...).
        """
        if frame.type is MessageType.ERROR:
            raise exception_for_error(ErrorBody.decode(frame))
        if frame.type is MessageType.AUTH and not self._challenged:
            self._challenged = True
            challenge = AuthChallenge.decode(frame)
            if self._token is None:
                raise AuthenticationError(
                    f"the server at {self.address} requires a token: pass token= or set RLMESH_TOKEN"
                )
            self._expected_proof = _auth.proof(self._token, "server", self.nonce, challenge.nonce)
            return AuthProof(_auth.proof(self._token, "client", self.nonce, challenge.nonce))
        if frame.type is not MessageType.HELLO:
            raise ProtocolError(f"expected HELLO from the server, got {frame.type.name}")
        hello = ServerHello.decode(frame)
        if self._expected_proof is not None:
            if not _auth.verify(self._expected_proof, hello.proof):
                raise AuthenticationError(
                    f"the server at {self.address} could not prove it knows the token: the tokens differ, "
                    "or it is not the server you meant"
                )
        elif self._require_auth:
            raise AuthenticationError(
                f"the server at {self.address} did not authenticate, but a token was given: it is not "
                "the server you meant, or it runs without a token (--insecure)"
            )
        return hello


class ServerHandshakeState(enum.Enum):
    """Where a server's handshake stands."""

    HELLO = "hello"
    """Waiting for the client's HELLO."""
    AUTH = "auth"
    """Challenged: waiting for the client's proof."""
    DONE = "done"
    """The client is who it says (or no token is needed): the server answers with its HELLO when it can."""


class ServerHandshake:
    """The server's side: :meth:`receive` each frame until the state is ``DONE``.

    Args:
        token: The token clients must prove they know; None: no authentication.
    """

    def __init__(self, token: bytes | None) -> None:
        self._token = token
        self.state = ServerHandshakeState.HELLO
        self.hello: ClientHello | None = None
        self.reply_id = 0  # the request id the server's next message answers
        self._nonce = ""

    def receive(self, frame: Frame) -> bytes | None:
        """Take the client's next frame; returns an AUTH challenge to send, or None.

        After the HELLO, without a token, or after a good proof, the state is ``DONE``.

        Raises:
            ProtocolError: A frame out of order, or malformed.
            AuthenticationError: The client's proof is wrong.
        """
        if self.state is ServerHandshakeState.HELLO:
            if frame.type is not MessageType.HELLO:
                raise ProtocolError(f"first message was {frame.type.name}, expected HELLO")
            self.hello = ClientHello.decode(frame)
            self.reply_id = frame.request_id
            self.state = ServerHandshakeState.DONE if self._token is None else ServerHandshakeState.AUTH
            return None
        if self.state is ServerHandshakeState.AUTH:
            if frame.type is not MessageType.AUTH:
                raise ProtocolError(f"expected AUTH, got {frame.type.name}")
            assert self.hello is not None and self._token is not None
            expected = _auth.proof(self._token, "client", self.hello.nonce, self._nonce)
            self.reply_id = frame.request_id  # the HELLO answers the proof
            if not _auth.verify(expected, AuthProof.decode(frame).proof):
                raise AuthenticationError("authentication failed: the client's token does not match the server's")
            self.state = ServerHandshakeState.DONE
            return None
        raise ProtocolError(f"unexpected {frame.type.name} once the handshake is done")

    def challenge(self) -> bytes:
        """The AUTH challenge to send, once the HELLO is in and a token is needed."""
        assert self.state is ServerHandshakeState.AUTH
        if not self._nonce:
            self._nonce = _auth.new_nonce()
        return AuthChallenge(self._nonce).encode(self.reply_id)

    def accept(self, hello_parts: tuple[dict[str, Any], list[np.ndarray[Any, Any]]]) -> bytes:
        """The server's HELLO frame (its encoded parts, from ``ServerHello.encode_parts``), with
        the server's proof when the client was challenged."""
        assert self.state is ServerHandshakeState.DONE and self.hello is not None
        proof = None
        if self._token is not None:
            proof = _auth.proof(self._token, "server", self.hello.nonce, self._nonce)
        return ServerHello.frame(hello_parts, self.reply_id, proof)
