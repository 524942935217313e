"""EnvServer: serve one Gymnasium env to one client at a time over a stream.

The server runs on asyncio with plain protocol callbacks: a request is decoded,
applied to the env and answered inside ``data_received``, with no task or
thread hop on the hot path. Env calls are synchronous, so one client at a time
is the natural model; a second concurrent client is told the server is busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import traceback
from collections.abc import Callable
from typing import Any, cast

import gymnasium as gym
import numpy as np

from .._address import Address, parse_address
from ..errors import InvalidActionError, ProtocolError
from ..protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    Connection,
    Message,
    MessageType,
    encode_frame,
    encode_message,
    encode_space,
    encode_value,
)
from ..protocol.messages import describe_spec
from ._types import EnvLike
from .validate import check_action

__all__ = ["READY_LINE_PREFIX", "EnvServer"]

log = logging.getLogger("rlmesh.server")

READY_LINE_PREFIX = "rlmesh-server ready"
HELLO_TIMEOUT = 10.0  # seconds a new connection has to send its HELLO



class EnvServer:
    """Serve a Gymnasium env (or vector env) to remote clients.

    Args:
        env_or_factory: The env, or a zero-argument callable that creates it
            (called once, when serving starts).
        address: ``unix:///abs/path.sock``, ``tcp://host:port`` or ``host:port``.
        max_frame_size: The largest frame accepted from a client.
        ready_message: Printed (with the address) once connections are accepted;
            None prints nothing.
        hello_timeout: Seconds a new connection has to send its HELLO before it is
            dropped, so that a silent peer cannot hold the one client slot.
    """

    def __init__(
        self,
        env_or_factory: EnvLike | Callable[[], EnvLike],
        address: str,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        ready_message: str | None = READY_LINE_PREFIX,
        hello_timeout: float = HELLO_TIMEOUT,
    ) -> None:
        self._address: Address = parse_address(address)
        self._env_or_factory = env_or_factory
        self._env: EnvLike | None = None
        self._max_frame_size = max_frame_size
        self._ready_message = ready_message
        self._hello_timeout = hello_timeout
        self._active: _ServerProtocol | None = None
        self._hello: list[bytes | memoryview] | None = None
        self._stop: asyncio.Event | None = None
        self.is_vector = False

    @property
    def address(self) -> str:
        """The address served, as a string."""
        return str(self._address)

    @property
    def env(self) -> EnvLike:
        """The served env (created on first use when a factory was given)."""
        if self._env is None:
            made = self._env_or_factory
            if not isinstance(made, (gym.Env, gym.vector.VectorEnv)) and callable(made):
                made = made()
            if not isinstance(made, (gym.Env, gym.vector.VectorEnv)):
                raise TypeError(f"env factory returned {type(made).__name__}, not a gymnasium env")
            self._env = made
            self.is_vector = isinstance(made, gym.vector.VectorEnv)
        return self._env

    def serve(self) -> None:
        """Serve until SIGTERM or SIGINT, then close the env and remove the socket."""
        try:
            import uvloop  # noqa: PLC0415  (optional speed-up)

            uvloop.run(self.serve_async())
        except ImportError:
            asyncio.run(self.serve_async())

    def stop(self) -> None:
        """Ask a running :meth:`serve_async` to return (call on its loop)."""
        if self._stop is not None:
            self._stop.set()

    async def serve_async(self, *, install_signal_handlers: bool = True) -> None:
        """Serve until :meth:`stop`, SIGTERM or SIGINT.

        Args:
            install_signal_handlers: Stop on SIGTERM/SIGINT (main thread only).
        """
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        env = self.env
        self._hello = self._build_hello(env)
        addr = self._address
        if addr.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(addr.path)
            server = await loop.create_unix_server(lambda: _ServerProtocol(self), addr.path)
        else:
            assert addr.host is not None and addr.port is not None
            server = await loop.create_server(lambda: _ServerProtocol(self), addr.host, addr.port)
            if addr.port == 0:
                port = server.sockets[0].getsockname()[1]
                self._address = Address(host=addr.host, port=port)
        handled: list[signal.Signals] = []
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, self._stop.set)
                    handled.append(sig)
        try:
            if self._ready_message is not None:
                print(f"{self._ready_message} on {self.address}", flush=True)
            log.info("serving %s on %s", _env_name(env), self.address)
            await self._stop.wait()
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
            server.close()
            if self._active is not None and self._active.transport is not None:
                self._active.transport.abort()
            await server.wait_closed()
            try:
                env.close()
            finally:
                if addr.path is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(addr.path)
                log.info("server on %s stopped", self.address)

    def _build_hello(self, env: EnvLike) -> list[bytes | memoryview]:
        buffers: list[np.ndarray[Any, Any]] = []
        vector = isinstance(env, gym.vector.VectorEnv)
        metadata = dict(env.metadata)
        autoreset = metadata.pop("autoreset_mode", None)
        body: dict[str, Any] = {
            "version": PROTOCOL_VERSION,
            "vector": vector,
            "num_envs": int(env.num_envs) if vector else None,  # type: ignore[union-attr]
            "observation_space": encode_space(env.observation_space, buffers),
            "action_space": encode_space(env.action_space, buffers),
            "metadata": encode_value(metadata, buffers),
            "render_mode": env.render_mode,
            "spec": encode_value(describe_spec(env.spec), buffers),
            "autoreset_mode": getattr(autoreset, "value", autoreset),
        }
        if vector:
            body["single_observation_space"] = encode_space(env.single_observation_space, buffers)  # type: ignore[union-attr]
            body["single_action_space"] = encode_space(env.single_action_space, buffers)  # type: ignore[union-attr]
        return encode_frame(MessageType.HELLO, 0, body, buffers)

    def handle(self, msg: Message) -> list[bytes | memoryview]:
        """Apply one request to the env and return the encoded reply."""
        env = self.env
        mtype = msg.type
        rid = msg.request_id
        try:
            if mtype is MessageType.STEP:
                action = msg.body
                check_action(env.action_space, action)
                return encode_message(mtype, rid, env.step(action))
            if mtype is MessageType.RESET:
                body = msg.body
                return encode_message(mtype, rid, env.reset(seed=body["seed"], options=body["options"]))
            if mtype is MessageType.RENDER:
                return encode_message(mtype, rid, env.render())
            if mtype is MessageType.CLOSE:
                return encode_message(mtype, rid, None)
            return error_reply(rid, "bad_request", "ValueError", f"unexpected message {mtype.name}")
        except Exception as exc:
            if isinstance(exc, InvalidActionError):
                return error_reply(rid, "invalid_action", "InvalidActionError", str(exc), space=exc.space)
            log.debug("env raised on %s", mtype.name, exc_info=True)
            return error_reply(
                rid,
                "env",
                f"{type(exc).__module__}.{type(exc).__qualname__}",
                str(exc),
                tb="".join(traceback.format_exception(exc)),
            )


def error_reply(
    request_id: int, kind: str, type_name: str, message: str, *, tb: str = "", space: str = ""
) -> list[bytes | memoryview]:
    """Encode an ERROR reply."""
    body = {"kind": kind, "type": type_name, "message": message, "traceback": tb, "space": space}
    return encode_message(MessageType.ERROR, request_id, body)


class _ServerProtocol(asyncio.Protocol):
    def __init__(self, server: EnvServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.conn = Connection(server._max_frame_size)
        self.greeted = False
        self.rejected = False
        self._hello_timer: asyncio.TimerHandle | None = None
        self.peer = "client"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.peer = str(transport.get_extra_info("peername") or "unix client")
        if self.server._active is not None:
            log.warning("rejecting %s: already serving a client", self.peer)
            self.transport.writelines(
                error_reply(0, "busy", "ServerBusyError", f"the server at {self.server.address} "
                            "already serves a client; it serves one client at a time")
            )
            # Half-close instead of close: closing with the client's HELLO unread
            # resets the connection, and the client would see "connection closed"
            # (or fail its write) instead of the busy reply. The client hangs up
            # once it has read the reply; the timer bounds a client that does not.
            self.rejected = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
                asyncio.get_running_loop().call_later(5.0, self.transport.abort)
            else:
                transport.close()
            return
        self.server._active = self
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # notice dead TCP peers
        # A peer that never says HELLO (a port scanner, a stuck client) must not hold the slot.
        timeout = self.server._hello_timeout
        self._hello_timer = asyncio.get_running_loop().call_later(timeout, self._no_hello, timeout)

    def _no_hello(self, timeout: float) -> None:
        if not self.greeted and self.transport is not None:
            self._drop(f"no HELLO within {timeout:g}s")

    def pause_writing(self) -> None:
        # Backpressure: a client that sends requests without reading replies stops being read.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self.rejected:
            return
        try:
            messages = self.conn.receive_data(data)
        except ProtocolError as exc:
            self._drop(str(exc))
            return
        for msg in messages:
            if not self.greeted:
                if msg.type is not MessageType.HELLO:
                    self._drop(f"first message was {msg.type.name}, expected HELLO")
                    return
                version = msg.body.get("version") if isinstance(msg.body, dict) else None
                if version != PROTOCOL_VERSION:
                    self._drop(f"client speaks protocol version {version!r}, server {PROTOCOL_VERSION}")
                    return
                self.greeted = True
                if self._hello_timer is not None:
                    self._hello_timer.cancel()
                assert self.server._hello is not None
                transport.writelines(_with_request_id(self.server._hello, msg.request_id))
                continue
            transport.writelines(self.server.handle(msg))
            if msg.type is MessageType.CLOSE:
                transport.close()
                return

    def _drop(self, reason: str) -> None:
        log.warning("closing connection from %s: %s", self.peer, reason)
        assert self.transport is not None
        self.transport.writelines(error_reply(0, "protocol", "ProtocolError", reason))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if self.server._active is self:
            self.server._active = None
        self.transport = None


def _with_request_id(chunks: list[bytes | memoryview], request_id: int) -> list[bytes | memoryview]:
    # The HELLO reply is encoded once; only its request id changes per client.
    first = bytearray(chunks[0])
    first[4:8] = request_id.to_bytes(4, "little")
    return [bytes(first), *chunks[1:]]


def _env_name(env: EnvLike) -> str:
    spec = env.spec
    return spec.id if spec is not None else type(env).__name__
