"""One client connection: the handshake, then requests out and replies matched to them by id.

The pieces: :mod:`~rlmesh.client.transport` (the asyncio protocol that matches replies to
requests), :mod:`~rlmesh.client.caller_thread` (sync callers writing and reading from their own
thread), :mod:`~rlmesh.client.listener` (a socket a server dials into) and
:mod:`~rlmesh.client.tls`. This module is the session on top: :class:`ClientConnection`.

The server is treated as hostile: replies are bounded by ``max_frame_size`` and, once the
handshake named the spaces, STEP and RESET replies by what those spaces allow
(:mod:`rlmesh.protocol.bounds`), both checked on a frame's header;
a reply to a request never sent, a reply of the wrong type, or a malformed body
is a :class:`~rlmesh.errors.ProtocolError` that closes the connection.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from .._address import parse_address
from .._checks import is_int
from ..errors import (
    ConnectError,
    InvalidArgumentError,
    ProtocolError,
    RemoteEnvError,
    RLMeshError,
    RLMeshTimeoutError,
)
from ..protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    MIN_FRAME_SIZE,
    AuthProof,
    ErrorBody,
    Frame,
    MessageType,
    ServerHello,
    exception_for_error,
)
from ..protocol.bounds import ReplyBound
from ..protocol.data_plane import DEFAULT_MAX_REGION_SIZE
from ..protocol.session import ClientHandshake
from .data_plane import ClientRegion, open_region
from .tls import TlsOption, make_client_tls
from .transport import SHARED_REPLY, ReplyProtocol, ReplySlot, expire_request

__all__ = ["ClientConnection", "PendingReply", "ReplySlot", "TlsOption", "make_client_tls"]

_CLOSE_TIMEOUT = 2.0  # seconds a server has to answer CLOSE before the connection is dropped
T = TypeVar("T")


class PendingReply(NamedTuple):
    """A request sent by :meth:`ClientConnection.send_request`, whose reply is awaited later."""

    future: asyncio.Future[Frame]
    rid: int
    timer: asyncio.TimerHandle | None


class ClientConnection:
    """A connected, handshaken (and, when the server asks, authenticated) session.

    Use :meth:`open` to create one.

    Attributes:
        hello: The server's handshake.
        address: The server's address.
    """

    def __init__(self, protocol: ReplyProtocol, address: str) -> None:
        self._p = protocol
        self.hello: ServerHello | None = None
        self.address = address
        self._unix = address.startswith("unix://")
        self.data_plane = "socket"
        # Called with each error the env raised, before it is raised: a sandbox adds what the
        # sandbox lacks (rlmesh.sandbox.library_hints).
        self.on_env_error: Callable[[RemoteEnvError], None] | None = None

    @classmethod
    async def open(
        cls,
        address: str,
        *,
        connect_timeout: float | None = 10.0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        token: bytes | None = None,
        require_auth: bool = False,
        tls: ssl.SSLContext | None = None,
        data_plane: str = "auto",
        max_region_size: int = DEFAULT_MAX_REGION_SIZE,
        render_mode: str | None = None,
    ) -> ClientConnection:
        """Connect to ``address``, authenticate if the server asks, and complete the handshake.

        Args:
            address: The server's address.
            connect_timeout: Seconds for connecting and the handshake; None waits forever.
            max_frame_size: The largest frame accepted from the server.
            token: The shared token, for servers that require one.
            require_auth: Refuse a server that does not prove it knows ``token``.
            tls: Encrypt the TCP connection with this context.
            data_plane: ``auto`` (shared memory where the server offers it over a Unix socket)
                or ``socket``.
            max_region_size: The largest shared region to create (bytes).
            render_mode: The render mode asked of a server that makes each client's env.

        Raises:
            ConnectError: Nothing accepts connections there.
            ServerBusyError: The server already serves a client.
            AuthenticationError: A wrong or missing token, or a server that cannot prove it.
            ProtocolError: The server broke the protocol.
            RLMeshTimeoutError: It took longer than ``connect_timeout``.
        """
        if not is_int(max_frame_size) or max_frame_size < MIN_FRAME_SIZE:
            raise InvalidArgumentError(f"max_frame_size must be an int of at least {MIN_FRAME_SIZE}, got {max_frame_size!r}")
        addr = parse_address(address)
        if tls is not None and addr.path is not None:
            raise InvalidArgumentError("tls applies to TCP addresses, not Unix sockets")
        loop = asyncio.get_running_loop()
        proto: ReplyProtocol | None = None

        def factory() -> ReplyProtocol:
            nonlocal proto
            proto = ReplyProtocol(max_frame_size)
            return proto

        async def connect_and_greet() -> ClientConnection:
            try:
                if addr.path is not None:
                    await loop.create_unix_connection(factory, addr.path)
                else:
                    assert addr.host is not None and addr.port is not None
                    transport, _ = await loop.create_connection(
                        factory, addr.host, addr.port, ssl=tls, server_hostname=addr.host if tls else None
                    )
                    sock = transport.get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except ssl.SSLError as exc:
                raise ConnectError(f"TLS with the server at {address} failed: {exc}") from exc
            except OSError as exc:
                raise ConnectError(
                    f"cannot connect to an rlmesh server at {address}: {exc.strerror or exc}. "
                    "Start one with `rlmesh serve SOURCE --address ...`"
                ) from exc
            assert proto is not None
            conn = cls(proto, address)
            conn._unix = addr.path is not None
            conn.hello = await conn._handshake(max_frame_size, token, require_auth, render_mode)
            await conn.open_data_plane(data_plane, max_region_size)
            return conn

        try:
            if connect_timeout is None:
                return await connect_and_greet()
            async with asyncio.timeout(connect_timeout):
                return await connect_and_greet()
        except BaseException as exc:
            # Cancelled, interrupted or failed mid-handshake: free the server's slot.
            if proto is not None and proto.transport is not None:
                proto.transport.abort()
            if isinstance(exc, TimeoutError) and not isinstance(exc, RLMeshError):
                raise RLMeshTimeoutError(
                    f"connecting to {address} took longer than connect_timeout={connect_timeout}s"
                ) from exc
            raise

    async def _handshake(self, max_frame_size: int, token: bytes | None, require_auth: bool,
                         render_mode: str | None = None) -> ServerHello:
        # The sequence is protocol.session's; a failure drops the connection.
        handshake = ClientHandshake(self.address, max_frame_size, token, require_auth, render_mode)
        try:
            step = handshake.receive(await self._roundtrip(MessageType.HELLO, handshake.hello()))
            if isinstance(step, AuthProof):
                step = handshake.receive(await self._roundtrip(MessageType.AUTH, step))
            if not isinstance(step, ServerHello):
                raise ProtocolError("the server asked for authentication twice")
        except ProtocolError as exc:
            self.abort()
            raise ProtocolError(f"{exc}; the connection was closed") from exc
        except BaseException:
            self.abort()
            raise
        return step

    async def _roundtrip(self, mtype: MessageType, body: Any) -> Frame:
        fut: asyncio.Future[Frame] = self._p.loop.create_future()
        self.submit(mtype, body, fut)
        return await fut

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the connection lives on."""
        return self._p.loop

    @property
    def is_closed(self) -> bool:
        """Whether the connection is closed or lost."""
        return self._p.lost is not None or self._p.transport is None or self._p.transport.is_closing()

    async def request(self, mtype: MessageType, body: Any, timeout: float | None = None) -> Frame:
        """Send one request and return its reply frame (check it with :meth:`unwrap`).

        Args:
            mtype: The request kind.
            body: The request body (a value, or a typed request with ``encode``).
            timeout: Seconds to wait for the reply; None waits forever.

        Raises:
            RLMeshTimeoutError: No reply within ``timeout``.
            TransportError: The connection is closed or was lost.
        """
        return await self.reply(self.send_request(mtype, body, timeout))

    def send_request(self, mtype: MessageType, body: Any, timeout: float | None = None) -> PendingReply:
        """Send one request now (the body is encoded before this returns); :meth:`reply` awaits its
        reply. Raises as :meth:`submit`."""
        p = self._p
        fut: asyncio.Future[Frame] = p.loop.create_future()
        rid = self.submit(mtype, body, fut)
        timer = None if timeout is None else p.loop.call_later(timeout, expire_request, p, rid, fut, timeout)
        return PendingReply(fut, rid, timer)

    async def reply(self, pending: PendingReply) -> Frame:
        """The reply to a request sent by :meth:`send_request` (raises as :meth:`request`)."""
        try:
            return await pending.future
        finally:
            if pending.timer is not None:
                pending.timer.cancel()
            if not pending.future.done() or pending.future.cancelled():
                self._p.abandon(pending.rid)

    def submit(self, mtype: MessageType, body: Any, slot: ReplySlot) -> int:
        """Encode and send a request whose reply goes to ``slot`` (on the loop); returns its id.
        See :meth:`ReplyProtocol.submit`."""
        return self._p.submit(mtype, body, slot)

    def stop_reading_here(self) -> None:
        """The calling thread stops reading this connection's replies, if it was (see
        :mod:`rlmesh.client.caller_thread`); a no-op otherwise, so safe in any clean-up."""
        self._p.stop_reading_here()

    @property
    def protocol(self) -> ReplyProtocol:
        """The connection's transport protocol (its socket, its send lock, its state)."""
        return self._p

    def bound_replies(self, bound: ReplyBound) -> None:
        """From now on, refuse a STEP, RESET or CLOSE reply (or an ERROR) larger than ``bound`` on its
        header, before reading its body; RENDER and CALL replies keep ``max_frame_size``."""
        p = self._p
        with p.send_lock:
            conn = p.conn
            if bound.size >= p.max_frame_size:
                return
            conn.max_frame_size = bound.size
            conn.limit_reason = (
                f"the largest STEP or RESET reply this env's spaces allow: {bound.describe()}; a bigger reply "
                "means a misbehaving server, or infos bigger than max_info_size: raise max_info_size= "
                "(or max_variable_size=) if they are legitimate"
            )
            if conn.reply_limits is None:
                conn.reply_limits = {}

    @property
    def region(self) -> ClientRegion | None:
        """The shared-memory region of the data plane, or None (the socket path)."""
        return self._p.region

    async def open_data_plane(self, mode: str, max_region_size: int = DEFAULT_MAX_REGION_SIZE) -> str:
        """Hand the server a shared-memory region where it can take one (see
        :mod:`rlmesh.client.data_plane`); returns the path chosen, in words."""
        assert self.hello is not None
        region, note = await open_region(self, self.hello, self._unix, mode, max_region_size)
        self._p.region = region
        self.data_plane = note
        return note

    @property
    def reply_limit(self) -> int:
        """The largest STEP or RESET reply accepted now (``max_frame_size`` until :meth:`bound_replies`)."""
        return self._p.conn.max_frame_size

    def abandon(self, rid: int) -> None:
        """Forget a request whose caller stopped waiting (on the loop)."""
        self._p.abandon(rid)

    def drop(self, pending: PendingReply) -> None:
        """Forget a request sent by :meth:`send_request` whose reply will not be awaited."""
        if pending.timer is not None:
            pending.timer.cancel()
        pending.future.cancel()
        self._p.abandon(pending.rid)

    def release_region(self, rid: int) -> None:
        """Free the region held by request ``rid`` (after :meth:`unwrap` with ``keep_region``)."""
        self._p.release_region(rid)

    def unwrap(self, frame: Frame, mtype: MessageType, decode: Callable[[Frame], T], *, keep_region: bool = False) -> T:
        """The body of a reply to a ``mtype`` request, checked by ``decode``.

        May be called from any thread.

        Raises:
            RLMeshError: The ERROR reply's exception (``RemoteEnvError`` for the env's own).
            ProtocolError: A reply of the wrong type or a malformed body; the connection is closed.
        """
        ftype = frame.type
        region = self._p.region
        keep = False
        try:
            if ftype is MessageType.ERROR:
                error = exception_for_error(ErrorBody.decode(frame))
                if self.on_env_error is not None and isinstance(error, RemoteEnvError):
                    self.on_env_error(error)
                raise error
            try:
                if ftype is not mtype and not (
                    region is not None and region.owner == frame.request_id and ftype is SHARED_REPLY.get(mtype)
                ):
                    raise ProtocolError(f"the server answered a {mtype.name} request with {ftype.name}")
                value = decode(frame)
                keep = keep_region
                return value
            except ProtocolError as exc:
                self.abort_threadsafe()
                raise ProtocolError(f"{exc}; the connection was closed") from exc
        finally:
            if not keep:
                self._p.release_region(frame.request_id)  # its arrays are copied out (or there were none)

    def abort(self) -> None:
        """Drop the connection at once (on the loop), and unmap its region."""
        self._p.closed_here = True
        if self._p.transport is not None:
            self._p.transport.abort()
        region, self._p.region = self._p.region, None
        if region is not None:
            region.close()

    def abort_threadsafe(self) -> None:
        """:meth:`abort`, from any thread."""
        loop = self._p.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self.abort()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self.abort)

    async def aclose(self) -> None:
        """Say goodbye (when still connected) and close the connection."""
        p = self._p
        self._p.closed_here = True
        if p.transport is None:
            return
        # A goodbye only on a quiet connection: after a timed-out request the server may still be
        # busy with it (or, if hostile, mid-frame), and a hang-up frees its slot just as well.
        if p.lost is None and not p.transport.is_closing() and not p.pending and not p.abandoned:
            try:
                await self.request(MessageType.CLOSE, None, timeout=_CLOSE_TIMEOUT)
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
        region, p.region = p.region, None
        if region is not None:
            region.close()
