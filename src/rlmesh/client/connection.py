"""One client connection: frames out, replies matched to requests by id.

The transport is an ``asyncio.Protocol``: replies resolve their request's future
straight from ``data_received``, so a request costs one write, one read callback
and one future, and several requests may be in flight at once (pipelining).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any, cast

from .._address import parse_address
from ..errors import (
    ConnectError,
    ConnectionClosedError,
    EnvClosedError,
    InvalidActionError,
    InvalidArgumentError,
    ProtocolError,
    RemoteEnvError,
    RLMeshError,
    RLMeshTimeoutError,
    ServerBusyError,
)
from ..protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    Connection,
    Message,
    MessageType,
    encode_message,
)

__all__ = ["ClientConnection", "error_from_reply"]

_ID_MASK = 0xFFFFFFFF


def error_from_reply(body: Any) -> RLMeshError:
    """Map an ERROR reply body to the matching exception."""
    if not isinstance(body, dict):
        return ProtocolError(f"malformed error reply: {body!r}")
    kind = body.get("kind")
    message = str(body.get("message", ""))
    if kind == "env":
        return RemoteEnvError(str(body.get("type")), message, str(body.get("traceback", "")))
    if kind == "invalid_action":
        return InvalidActionError(message, space=str(body.get("space", "")))
    if kind == "busy":
        return ServerBusyError(message)
    if kind == "bad_request":
        return InvalidArgumentError(message)
    return ProtocolError(f"server reported a protocol error: {message}")


class _Protocol(asyncio.Protocol):
    def __init__(self, max_frame_size: int) -> None:
        self.conn = Connection(max_frame_size)
        self.pending: dict[int, asyncio.Future[Message]] = {}
        self.transport: asyncio.Transport | None = None
        self.lost: RLMeshError | None = None
        self.loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.conn.receive_data(data)
        except ProtocolError as exc:
            self._fail(exc)
            return
        pending = self.pending
        for msg in messages:
            fut = pending.pop(msg.request_id, None)
            if fut is None:
                if msg.type is MessageType.ERROR and msg.request_id == 0:
                    # A connection-level error (busy, protocol): every request fails.
                    self._fail(error_from_reply(msg.body))
                    return
                continue  # a late reply to a request that timed out: dropped
            if not fut.done():
                fut.set_result(msg)

    def _fail(self, exc: RLMeshError) -> None:
        if self.lost is None:
            self.lost = exc
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self.pending.clear()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionClosedError(
            "the env server closed the connection"
            + (f": {exc}" if exc else "")
            + "; the server process may have exited or been stopped"
        ))
        if not self.closed.done():
            self.closed.set_result(None)


class _ThreadWaiter:
    """The reply slot of a request made from another thread (the sync classes).

    It stands in ``_Protocol.pending`` where an ``asyncio.Future`` would (it has
    the ``done``/``set_result``/``set_exception`` that ``data_received`` and
    ``_fail`` use), so the reply wakes the waiting thread straight from
    ``data_received``: no task, no coroutine, one thread hop each way.
    """

    __slots__ = ("_done", "_exc", "_lock", "_value", "rid")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._done = False
        self._value: Message | None = None
        self._exc: BaseException | None = None
        self.rid = 0

    def done(self) -> bool:
        return self._done

    def set_result(self, value: Message) -> None:
        self._value, self._done = value, True
        self._lock.release()

    def set_exception(self, exc: BaseException) -> None:
        self._exc, self._done = exc, True
        self._lock.release()

    def wait(self, timeout: float | None) -> Message:
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError
        if self._exc is not None:
            raise self._exc
        assert self._value is not None
        return self._value


class ClientConnection:
    """A connected, handshaken session with an env server.

    Use :meth:`open` to create one.

    Attributes:
        hello: The server's handshake body.
    """

    def __init__(self, protocol: _Protocol, hello: dict[str, Any], address: str) -> None:
        self._p = protocol
        self._next_id = 1
        self._closed_here = False
        self.hello = hello
        self.address = address

    @classmethod
    async def open(
        cls,
        address: str,
        *,
        connect_timeout: float | None = 10.0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> ClientConnection:
        """Connect to ``address`` and complete the handshake.

        Raises:
            ConnectError: Nothing accepts connections there.
            ServerBusyError: The server already serves a client.
            RLMeshTimeoutError: The connect or handshake took longer than ``connect_timeout``.
        """
        addr = parse_address(address)
        loop = asyncio.get_running_loop()
        proto: _Protocol | None = None

        def factory() -> _Protocol:
            nonlocal proto
            proto = _Protocol(max_frame_size)
            return proto

        async def connect_and_greet() -> ClientConnection:
            try:
                if addr.path is not None:
                    await loop.create_unix_connection(factory, addr.path)
                else:
                    assert addr.host is not None and addr.port is not None
                    transport, _ = await loop.create_connection(factory, addr.host, addr.port)
                    sock = transport.get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:
                raise ConnectError(
                    f"cannot connect to an rlmesh server at {address}: {exc.strerror or exc}. "
                    "Start one with `rlmesh serve SOURCE --address ...`"
                ) from exc
            assert proto is not None
            conn = cls(proto, {}, address)
            reply = await conn.request(MessageType.HELLO, {"version": PROTOCOL_VERSION})
            if not isinstance(reply, dict) or reply.get("version") != PROTOCOL_VERSION:
                conn.abort()
                raise ProtocolError(f"unexpected handshake from {address}: {reply!r:.200}")
            conn.hello = reply
            return conn

        try:
            if connect_timeout is None:
                return await connect_and_greet()
            async with asyncio.timeout(connect_timeout):
                return await connect_and_greet()
        except BaseException as exc:
            # Cancelled, interrupted or failed mid-handshake: free the server's one client slot.
            if proto is not None and proto.transport is not None:
                proto.transport.abort()
            if isinstance(exc, TimeoutError) and not isinstance(exc, RLMeshError):
                raise RLMeshTimeoutError(
                    f"connecting to {address} took longer than connect_timeout={connect_timeout}s"
                ) from exc
            raise

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the connection lives on."""
        return self._p.loop

    @property
    def is_closed(self) -> bool:
        """Whether the connection is closed or lost."""
        return self._p.lost is not None or self._p.transport is None or self._p.transport.is_closing()

    async def request(self, mtype: MessageType, body: Any, timeout: float | None = None) -> Any:
        """Send one request and return the reply body.

        Args:
            mtype: The request kind.
            body: The request body.
            timeout: Seconds to wait for the reply; None waits forever.

        Raises:
            RemoteEnvError: The env raised.
            InvalidActionError: The action is not in the action space.
            RLMeshTimeoutError: No reply within ``timeout``.
            TransportError: The connection is closed or was lost.
        """
        p = self._p
        fut: asyncio.Future[Message] = p.loop.create_future()
        rid = self._send(mtype, body, fut)
        timer = None
        if timeout is not None:
            timer = p.loop.call_later(timeout, _expire, p, rid, fut, timeout)
        try:
            msg = await fut
        finally:
            if timer is not None:
                timer.cancel()
            if not fut.done() or fut.cancelled():
                p.pending.pop(rid, None)
        if msg.type is MessageType.ERROR:
            raise error_from_reply(msg.body)
        return msg.body

    def request_from_thread(self, mtype: MessageType, body: Any, timeout: float | None = None) -> Any:
        """:meth:`request`, called from a thread other than the connection's loop.

        Blocks the calling thread. Same errors as :meth:`request`.
        """
        p = self._p
        waiter = _ThreadWaiter()
        p.loop.call_soon_threadsafe(self._send_for_thread, mtype, body, waiter)
        try:
            msg = waiter.wait(timeout)
        except TimeoutError:
            p.loop.call_soon_threadsafe(_forget, p, waiter)
            raise RLMeshTimeoutError(
                f"no reply from the env server within request_timeout={timeout}s"
            ) from None
        if msg.type is MessageType.ERROR:
            raise error_from_reply(msg.body)
        return msg.body

    def _send(self, mtype: MessageType, body: Any, waiter: asyncio.Future[Message] | _ThreadWaiter) -> int:
        # On the loop: check the connection, encode, register the waiter, write.
        p = self._p
        if p.lost is not None:
            raise p.lost
        transport = p.transport
        if transport is None or transport.is_closing():
            if self._closed_here:
                raise EnvClosedError("the connection to the env server is closed")
            # The peer hung up and connection_lost has not run yet.
            raise ConnectionClosedError("the env server closed the connection")
        rid = self._next_id
        self._next_id = (rid + 1) & _ID_MASK or 1
        try:
            chunks = encode_message(mtype, rid, body)
        except (TypeError, ValueError, RecursionError) as exc:
            # orjson refuses lone surrogates and very deep nesting; encode before
            # registering the request, so that nothing is left pending.
            raise InvalidArgumentError(
                f"cannot encode the {mtype.name} request: {type(exc).__name__}: {exc}"
            ) from exc
        p.pending[rid] = waiter  # type: ignore[assignment]
        transport.writelines(chunks)
        return rid

    def _send_for_thread(self, mtype: MessageType, body: Any, waiter: _ThreadWaiter) -> None:
        # Runs on the loop. Any failure goes to the waiting thread.
        try:
            waiter.rid = self._send(mtype, body, waiter)
        except BaseException as exc:
            if not waiter.done():
                waiter.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    def abort(self) -> None:
        """Drop the connection at once."""
        self._closed_here = True
        if self._p.transport is not None:
            self._p.transport.abort()

    async def aclose(self) -> None:
        """Say goodbye (when still connected) and close the connection."""
        p = self._p
        self._closed_here = True
        if p.transport is None:
            return
        if p.lost is None and not p.transport.is_closing():
            try:
                await self.request(MessageType.CLOSE, None, timeout=5.0)
            except RLMeshError:
                p.transport.abort()  # a wedged server must not keep close() waiting
        if p.transport is not None:
            p.transport.close()
        try:
            async with asyncio.timeout(5.0):
                await asyncio.shield(p.closed)
        except TimeoutError:
            if p.transport is not None:
                p.transport.abort()


def _forget(p: _Protocol, waiter: _ThreadWaiter) -> None:
    if p.pending.get(waiter.rid) is waiter:  # type: ignore[comparison-overlap]
        del p.pending[waiter.rid]


def _expire(p: _Protocol, rid: int, fut: asyncio.Future[Message], timeout: float) -> None:
    p.pending.pop(rid, None)
    if not fut.done():
        fut.set_exception(RLMeshTimeoutError(f"no reply from the env server within request_timeout={timeout}s"))
