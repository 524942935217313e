"""One client connection: the handshake, then frames out and replies matched to requests by id.

The transport is an ``asyncio.Protocol``: a reply resolves its request's slot
straight from ``data_received``, so a request costs one write, one read
callback and one future, and several requests may be in flight at once
(pipelining). A slot is anything with ``done``/``set_result``/``set_exception``:
an ``asyncio.Future`` for async callers, or the sync layer's thread slot
(:mod:`rlmesh._portal`), which wakes a blocked thread without a task.

Sync callers go faster still: they write their requests on the socket from their own
thread (:meth:`ClientConnection.send_from_thread`) and, once the loop is idle (it pauses
reading when nothing is pending on a connection sync callers use), read their replies
there too (:func:`read_replies`), with the same parser and the same checks. Exactly one
side reads at a time (``_Protocol.reader``), under the connection's send lock.

The server is treated as hostile: replies are bounded by ``max_frame_size`` and, once the
handshake named the spaces, STEP and RESET replies by what those spaces allow
(:mod:`rlmesh.protocol.bounds`), both checked on a frame's header;
a reply to a request never sent, a reply of the wrong type, or a malformed body
is a :class:`~rlmesh.errors.ProtocolError` that closes the connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar, cast

from .._address import parse_address
from ..errors import (
    AuthenticationError,
    ConnectError,
    ConnectionClosedError,
    EnvClosedError,
    InvalidArgumentError,
    ProtocolError,
    RLMeshError,
    RLMeshTimeoutError,
    UnencodableError,
)
from ..protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    MIN_FRAME_SIZE,
    PROTOCOL_VERSION,
    AuthChallenge,
    AuthProof,
    CallRequest,
    ClientHello,
    Connection,
    ErrorBody,
    Frame,
    MessageType,
    ResetRequest,
    ServerHello,
    encode_message,
    exception_for_error,
)
from ..protocol import auth as _auth
from ..protocol.bounds import ReplyBound
from .data_plane import ClientRegion, open_region

__all__ = ["ClientConnection", "Listener", "ReplySlot", "TlsOption", "make_client_tls"]

_ID_MASK = 0xFFFFFFFF
_MAX_ABANDONED = 4096
_CLOSE_TIMEOUT = 2.0  # seconds a server has to answer CLOSE before the connection is dropped
T = TypeVar("T")
TlsOption = bool | str | ssl.SSLContext | None


class ReplySlot(Protocol):
    """Where a reply goes: an ``asyncio.Future[Frame]`` or a thread slot."""

    def done(self) -> bool: ...  # noqa: D102
    def set_result(self, result: Frame, /) -> None: ...  # noqa: D102
    def set_exception(self, exception: BaseException, /) -> None: ...  # noqa: D102


def make_client_tls(tls: TlsOption) -> ssl.SSLContext | None:
    """``tls=`` as an ``SSLContext``: True (system CAs), a CA file path, or a context.

    Raises:
        InvalidArgumentError: Anything else, or a CA file that cannot be loaded.
    """
    if tls is None or tls is False:
        return None
    if tls is True:
        return ssl.create_default_context()
    if isinstance(tls, ssl.SSLContext):
        return tls
    if isinstance(tls, str):
        try:
            return ssl.create_default_context(cafile=tls)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidArgumentError(f"cannot load the TLS CA file {tls}: {exc}") from exc
    raise InvalidArgumentError(f"tls must be True, a CA file path or an ssl.SSLContext, got {tls!r}")


_protocols: weakref.WeakSet[_Protocol] = weakref.WeakSet()
_fork_lock = threading.Lock()  # no fork between a descriptor's dup and its registration


class _Protocol(asyncio.Protocol):
    def __init__(self, max_frame_size: int) -> None:
        self.conn = Connection(max_frame_size)
        self.max_frame_size = max_frame_size  # the user's ceiling (RENDER and CALL replies keep it)
        self.pending: dict[int, ReplySlot] = {}
        self.abandoned: dict[int, None] = {}  # ids of requests given up on (a late reply is dropped)
        self.transport: asyncio.Transport | None = None
        self.lost: RLMeshError | None = None
        self.loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        # Writes and request ids, from the loop or from a sync caller's thread (send_from_thread).
        self.send_lock = threading.RLock()
        self.next_id = 1
        self.direct: socket.socket | None = None  # the connection's socket, for sync callers' writes
        # Bytes that must reach the socket before any other write: the rest of a direct write
        # the socket did not take at once (the loop flushes them, in order, ahead of its own).
        self.backlog: collections.deque[bytes] = collections.deque()
        # Who reads the socket: "loop" (the transport), "thread" (a sync caller, on `direct`,
        # while the transport is paused), or "none" (paused, idle). Once a sync caller has used
        # the connection (sync_wanted), the loop pauses whenever nothing is pending, and the next
        # sync caller reads its own reply: one thread wake fewer per request.
        self.reader = "loop"
        self.reader_thread = 0  # the thread reading, while reader == "thread"
        self.paused = False
        self.sync_wanted = False
        self.region: ClientRegion | None = None  # the shared-memory data plane, once handed over

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None and transport.get_extra_info("ssl_object") is None:
            # A descriptor of our own for the same socket (uvloop hands out a pseudo-socket). It
            # is non-blocking already; the loop keeps reading, and both sides write under
            # send_lock. TLS connections have no direct path (their bytes are the SSL object's).
            with _fork_lock, contextlib.suppress(OSError):
                direct = socket.socket(fileno=os.dup(sock.fileno()))
                direct.setblocking(False)
                self.direct = direct
        _protocols.add(self)

    def close_direct(self) -> None:
        # Our descriptor would keep the socket open after the transport closed its own: the
        # peer would not see the end. A thread reading on it is woken instead (closing a
        # descriptor does not wake a poll on it), and closes it when it stops reading.
        with self.send_lock:
            direct = self.direct
            if direct is None:
                return
            if self.reader == "thread":
                with contextlib.suppress(OSError):
                    direct.shutdown(socket.SHUT_RDWR)
                return
            self.direct = None
        direct.close()

    def data_received(self, data: bytes) -> None:
        self.receive(data, on_loop=True)
        if self.sync_wanted and not self.pending:
            self._pause_if_idle()

    def receive(self, data: bytes, *, on_loop: bool) -> None:
        """Parse received bytes and resolve their requests (on the loop, or in the reading thread)."""
        try:
            frames = self.conn.receive_data(data)
        except ProtocolError as exc:
            (self.fail if on_loop else self.fail_from_thread)(ProtocolError(f"{exc}; the connection was closed"))
            return
        self.dispatch(frames, on_loop=on_loop)

    def dispatch(self, frames: list[Frame], *, on_loop: bool) -> None:
        """Resolve each frame's request (from the loop, or from the thread that reads instead)."""
        fail = self.fail if on_loop else self.fail_from_thread
        try:
            for frame in frames:
                rid = frame.request_id
                with self.send_lock:
                    slot = self.pending.pop(rid, None)
                    late = slot is None and self.abandoned.pop(rid, _NOT_ABANDONED) is None
                if slot is None:
                    if late:
                        region = self.region
                        if region is not None and region.owner == rid:
                            region.owner = 0  # nobody copies its arrays: the region is free again
                        continue  # a late reply to a request that timed out
                    if frame.type is MessageType.ERROR and rid == 0:
                        # A connection-level error (busy, protocol, auth, idle): every request fails.
                        fail(exception_for_error(ErrorBody.decode(frame)))
                        return
                    fail(ProtocolError(
                        f"the server sent a {frame.type.name} reply to request {rid}, which was never made; "
                        "the connection was closed"
                    ))
                    return
                if not on_loop and isinstance(slot, asyncio.Future):
                    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits it
                        self.loop.call_soon_threadsafe(_resolve, slot, frame)
                elif not slot.done():
                    slot.set_result(frame)
        except Exception as exc:  # noqa: BLE001  (a bug on this side must not wedge the caller)
            fail(ProtocolError(f"could not handle a frame from the server ({type(exc).__name__}: {exc}); "
                               "the connection was closed"))

    def _pause_if_idle(self) -> None:
        # On the loop: nothing is pending, so the next sync caller may read its own reply.
        with self.send_lock:
            transport = self.transport
            if self.reader == "loop" and not self.pending and not self.conn.buffered and self.lost is None \
                    and self.direct is not None and transport is not None and not transport.is_closing():
                transport.pause_reading()
                self.paused, self.reader = True, "none"

    def read_on_loop(self) -> None:
        # Under send_lock, on the loop: the loop must read (a request of its own, or the rest of
        # a sync caller's). A thread reading now hands over when it stops.
        if self.reader == "none":
            self.reader = "loop"
            self._resume()

    def _resume(self) -> None:
        # On the loop, under send_lock.
        if self.reader == "loop" and self.paused and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            self.paused = False

    def resume_soon(self) -> None:
        with self.send_lock:
            self._resume()

    def stop_reading_here(self) -> None:
        """The calling thread stops reading (if it was): the loop reads again if anything is still
        pending (or half received), and a connection lost meanwhile gets its descriptor closed.
        Idempotent, and a no-op for a thread that was not reading (safe in any clean-up)."""
        with self.send_lock:
            if self.reader != "thread" or self.reader_thread != threading.get_ident():
                return
            if self.lost is None and (self.pending or self.conn.buffered):
                self.reader = "loop"
                with contextlib.suppress(RuntimeError):
                    self.loop.call_soon_threadsafe(self.resume_soon)
            else:
                self.reader = "none"
        if self.lost is not None:
            self.close_direct()

    def abandon(self, rid: int) -> None:
        with self.send_lock:
            if self.pending.pop(rid, None) is not None:
                self.abandoned[rid] = None
                if len(self.abandoned) > _MAX_ABANDONED:
                    oldest = next(iter(self.abandoned))
                    del self.abandoned[oldest]
                    if self.conn.reply_limits is not None:
                        self.conn.reply_limits.pop(oldest, None)

    def fail(self, exc: RLMeshError) -> None:
        # Under send_lock throughout: a request being sent from another thread is in `pending`
        # (and fails here), or sees `lost`; a thread reading sees its slot done.
        with self.send_lock:
            if self.lost is None:
                self.lost = exc
            slots = list(self.pending.values())
            self.pending.clear()
            for slot in slots:
                if not slot.done():
                    slot.set_exception(exc)
        self.close_direct()
        if self.transport is not None:
            self.transport.abort()

    def fail_from_thread(self, exc: RLMeshError) -> None:
        """:meth:`fail`, from the thread reading in the loop's place: its requests fail now, the
        loop's own through the loop, and the loop drops the transport."""
        with self.send_lock:
            if self.lost is None:
                self.lost = exc
            slots = list(self.pending.values())
            self.pending.clear()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to drop
            for slot in slots:
                if isinstance(slot, asyncio.Future):
                    self.loop.call_soon_threadsafe(_reject, slot, exc)
                elif not slot.done():
                    slot.set_exception(exc)
            self.loop.call_soon_threadsafe(self.fail, exc)

    def write(self, data: bytes) -> None:
        # On the loop, under send_lock: after the backlog, never before it.
        if self.backlog:
            self.backlog.append(data)
        else:
            assert self.transport is not None
            self.transport.write(data)

    def flush_backlog(self) -> None:
        # On the loop: what direct writes left over, in order, then whatever queued behind it.
        with self.send_lock:
            backlog, self.backlog = self.backlog, collections.deque()
            if self.transport is not None and not self.transport.is_closing():
                for data in backlog:
                    self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionClosedError(
            "the env server closed the connection"
            + (f": {exc}" if exc else "")
            + "; the server process may have exited or been stopped"
        ))
        if not self.closed.done():
            self.closed.set_result(None)


_NOT_ABANDONED = object()
_UNBOUNDED = (MessageType.RENDER, MessageType.CALL)  # replies the spaces do not bound
_SHARED = {MessageType.STEP: MessageType.STEP_SHARED, MessageType.RESET: MessageType.RESET_SHARED}
_SHARED_TYPES = frozenset(_SHARED.values())
_READ_SIZE = 1 << 18


def _resolve(fut: asyncio.Future[Frame], frame: Frame) -> None:
    if not fut.done():
        fut.set_result(frame)


def _reject(fut: asyncio.Future[Frame], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def read_replies(readers: Sequence[tuple[ClientConnection, ReplySlot]], timeout: float | None) -> None:
    """Read the sockets of connections this thread reads for (``send_from_thread`` said so) until
    every slot is done, dispatching what comes in; then hand reading back (also when interrupted).

    One poll set serves the whole wait, and only the connections that had something to read are
    looked at after each wake: a gather over K connections costs O(K), not O(K^2).

    Raises:
        TimeoutError: A slot was not done within ``timeout`` seconds.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    active = {conn._p: slot for conn, slot in readers}
    poller = select.poll()
    by_fd: dict[int, _Protocol] = {}
    fd_of: dict[_Protocol, int] = {}
    check = list(active)
    try:
        while True:
            for p in check:
                slot = active.get(p)
                if slot is None:
                    continue
                if not slot.done() and (p.direct is None or p.lost is not None):  # lost meanwhile (the loop failed it)
                    p.fail_from_thread(p.lost or ConnectionClosedError("the connection to the env server was closed"))
                    if not slot.done():
                        slot.set_exception(p.lost or ConnectionClosedError("the connection was closed"))
                if slot.done():
                    del active[p]
                    fd = fd_of.pop(p, None)
                    if fd is not None:
                        poller.unregister(fd)
                        del by_fd[fd]
                    p.stop_reading_here()
                elif p not in fd_of and p.direct is not None:
                    fd = p.direct.fileno()
                    fd_of[p], by_fd[fd] = fd, p
                    poller.register(fd, select.POLLIN)
            if not active:
                return
            wait = _POLL_CAP
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                wait = min(wait, left)
            events = poller.poll(wait * 1000)
            if not events:  # a quiet while: look at every connection again
                check = list(active)
                continue
            check = []
            for fd, _ in events:
                ready = by_fd.get(fd)
                if ready is not None:
                    _read_once(ready)
                    check.append(ready)
    finally:
        for p in active:
            p.stop_reading_here()


_POLL_CAP = 1.0  # seconds a reading thread waits before it looks at every connection again


def _read_once(p: _Protocol) -> None:
    direct = p.direct
    if direct is None:
        return
    try:
        try:
            data = direct.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            p.fail_from_thread(ConnectionClosedError(f"the connection to the env server failed: {exc}"))
            return
        if not data:
            p.fail_from_thread(p.lost or ConnectionClosedError(
                "the env server closed the connection; the server process may have exited or been stopped"))
            return
        p.receive(data, on_loop=False)
    except BaseException:
        # Interrupted (KeyboardInterrupt) with bytes read but not yet dispatched: what follows on
        # the stream cannot be read, and other callers' replies may be gone. Drop the connection.
        p.fail_from_thread(ConnectionClosedError(
            "a reply was interrupted while it was being read; the connection was dropped"))
        raise


def _encode_request(p: _Protocol, mtype: MessageType, body: Any) -> tuple[int, bytes]:
    # Under p.send_lock: the next request id, and the frame. Encoding comes before the request is
    # registered, so that a body that cannot be encoded leaves nothing pending.
    rid = p.next_id
    region = p.region
    if region is not None and region.owner == 0 and mtype in _SHARED:
        # The region is free: this reply may leave its arrays there (one such request at a time).
        mtype = _SHARED[mtype]
        if isinstance(body, ResetRequest):
            body = {"seed": body.seed, "options": body.options}
    try:
        if isinstance(body, (ResetRequest, CallRequest, ClientHello, AuthProof)):
            data = body.encode(rid)
        else:
            data = encode_message(mtype, rid, body)
    except (TypeError, ValueError, RecursionError, OverflowError) as exc:
        # orjson refuses lone surrogates and very deep nesting.
        raise UnencodableError(f"cannot encode the {mtype.name} request: {type(exc).__name__}: {exc}") from exc
    p.next_id = (rid + 1) & _ID_MASK or 1
    if region is not None and mtype in _SHARED_TYPES:
        region.owner = rid
    limits = p.conn.reply_limits
    if limits is not None and mtype in _UNBOUNDED:
        limits[rid] = p.max_frame_size  # its reply is not bounded by the spaces
    return rid, data


def _after_fork_in_child() -> None:
    # A forked child must not hold its parent's connections open (a sandbox ends when its
    # owner's end closes): close the child's copies of our descriptors (they are ours alone;
    # the transports' own are handled by rlmesh.sandbox.ownership). Its connections are its
    # parent's, served by a loop thread the child does not have: using one is a clear error,
    # never a wait on a lock some parent thread held at the fork.
    _fork_lock.release()
    for p in list(_protocols):
        p.send_lock = threading.RLock()
        if p.lost is None:
            p.lost = EnvClosedError("this env was made in the parent process, before os.fork(); "
                                    "a forked child must make its own")
        direct, p.direct = p.direct, None
        if direct is not None:
            with contextlib.suppress(OSError):
                direct.close()


os.register_at_fork(before=_fork_lock.acquire, after_in_parent=_fork_lock.release,
                    after_in_child=_after_fork_in_child)


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

    def __init__(self, protocol: _Protocol, address: str) -> None:
        self._p = protocol
        self._closed_here = False
        self.hello: ServerHello | None = None
        self.address = address
        self._unix = address.startswith("unix://")
        self.data_plane = "socket"

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

        Raises:
            ConnectError: Nothing accepts connections there.
            ServerBusyError: The server already serves a client.
            AuthenticationError: A wrong or missing token, or a server that cannot prove it.
            ProtocolError: The server broke the protocol.
            RLMeshTimeoutError: It took longer than ``connect_timeout``.
        """
        if isinstance(max_frame_size, bool) or not isinstance(max_frame_size, int) or max_frame_size < MIN_FRAME_SIZE:
            raise InvalidArgumentError(f"max_frame_size must be an int of at least {MIN_FRAME_SIZE}, got {max_frame_size!r}")
        addr = parse_address(address)
        if tls is not None and addr.path is not None:
            raise InvalidArgumentError("tls applies to TCP addresses, not Unix sockets")
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
            conn.hello = await conn._handshake(max_frame_size, token, require_auth)
            await conn.open_data_plane(data_plane)
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

    @classmethod
    async def listen(cls, path: str, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> Listener:
        """Listen on a Unix socket for one server that dials in (``rlmesh serve --dial``).

        Sandboxes use this: the container gets the socket file mounted read-only, and the
        server's connection is accepted here, then handshaken by :meth:`Listener.accept`.
        """
        listener = Listener(path, max_frame_size)
        await listener.start()
        return listener

    async def _handshake(self, max_frame_size: int, token: bytes | None, require_auth: bool) -> ServerHello:
        nonce = _auth.new_nonce()
        frame = await self._roundtrip(MessageType.HELLO, ClientHello(PROTOCOL_VERSION, nonce, max_frame_size))
        expected_proof = None
        if frame.type is MessageType.AUTH:
            challenge = self._checked(frame, MessageType.AUTH, AuthChallenge.decode)
            if token is None:
                raise AuthenticationError(
                    f"the server at {self.address} requires a token: pass token= or set RLMESH_TOKEN"
                )
            proof = _auth.proof(token, "client", nonce, challenge.nonce)
            expected_proof = _auth.proof(token, "server", nonce, challenge.nonce)
            frame = await self._roundtrip(MessageType.AUTH, AuthProof(proof))
        hello = self._checked(frame, MessageType.HELLO, ServerHello.decode)
        if expected_proof is not None:
            if not _auth.verify(expected_proof, hello.proof):
                self.abort()
                raise AuthenticationError(
                    f"the server at {self.address} could not prove it knows the token: the tokens differ, "
                    "or it is not the server you meant"
                )
        elif require_auth:
            self.abort()
            raise AuthenticationError(
                f"the server at {self.address} did not authenticate, but a token was given: it is not "
                "the server you meant, or it runs without a token (--insecure)"
            )
        return hello

    async def _roundtrip(self, mtype: MessageType, body: Any) -> Frame:
        fut: asyncio.Future[Frame] = self._p.loop.create_future()
        self.submit(mtype, body, fut)
        return await fut

    def _checked(self, frame: Frame, mtype: MessageType, decode: Callable[[Frame], T]) -> T:
        if frame.type is MessageType.ERROR:
            raise exception_for_error(ErrorBody.decode(frame))
        if frame.type is not mtype:
            self.abort()
            raise ProtocolError(f"expected {mtype.name} from the server, got {frame.type.name}; the connection was closed")
        try:
            return decode(frame)
        except ProtocolError as exc:
            self.abort()
            raise ProtocolError(f"{exc}; the connection was closed") from exc

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
        timer = None if timeout is None else p.loop.call_later(timeout, _expire, p, rid, fut, timeout)
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
        """Encode and send a request whose reply goes to ``slot``; returns its request id.

        Must run on the connection's loop. Failures are raised, never left in ``slot``.

        Raises:
            EnvClosedError: This side closed the connection.
            TransportError: The connection was lost.
            InvalidArgumentError: The body cannot be encoded.
        """
        p = self._p
        if p.lost is not None:
            raise p.lost
        transport = p.transport
        if transport is None or transport.is_closing():
            if self._closed_here:
                raise EnvClosedError("the connection to the env server is closed")
            # The peer hung up and connection_lost has not run yet.
            raise ConnectionClosedError("the env server closed the connection")
        with p.send_lock:
            rid, data = _encode_request(p, mtype, body)
            p.pending[rid] = slot
            p.write(data)
            p.read_on_loop()
        return rid

    def send_from_thread(self, mtype: MessageType, body: Any, slot: ReplySlot) -> int:
        """Send a request from a thread other than the loop's, writing it on the socket from this
        thread (no hop to the loop).

        Returns:
            0, having sent nothing, where only the loop can send it (TLS, bytes still queued, a
            closing transport): then use :meth:`submit` on the loop. 1: sent; the reply comes
            through the loop into ``slot``. 2: sent, and the loop is not reading: this thread
            must read the reply itself, with :func:`read_replies` (one thread wake fewer).

        If this thread is interrupted while the frame may be partly written, the connection is
        dropped (what follows on the stream could not be read).

        Raises:
            TransportError: The connection was lost.
            InvalidArgumentError: The body cannot be encoded.
        """
        p = self._p
        with p.send_lock:
            direct, transport = p.direct, p.transport
            if p.lost is not None:
                raise p.lost
            if direct is None or transport is None or transport.is_closing() or p.backlog \
                    or transport.get_write_buffer_size():
                return 0
            rid, data = _encode_request(p, mtype, body)
            p.pending[rid] = slot
            slot.rid = rid  # type: ignore[attr-defined]
            sending = True
            try:
                try:
                    sent = direct.send(data)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    sending = False
                    del p.pending[rid]
                    if p.conn.reply_limits is not None:
                        p.conn.reply_limits.pop(rid, None)
                    if p.region is not None and p.region.owner == rid:
                        p.region.owner = 0  # never sent: the loop sends it again, under a new id
                    return 0  # the loop's write reports the failure (and the loss) as usual
                if sent < len(data):
                    p.backlog.append(data[sent:])
                    p.loop.call_soon_threadsafe(p.flush_backlog)
                sending = False
                p.sync_wanted = True
                if p.reader == "none":
                    p.reader, p.reader_thread = "thread", threading.get_ident()
                    return 2
            finally:
                if sending:  # interrupted (KeyboardInterrupt) with part of the frame maybe sent
                    p.pending.pop(rid, None)
                    p.loop.call_soon_threadsafe(p.fail, ConnectionClosedError(
                        "a request was interrupted while it was being written; the connection was dropped"))
        return 1

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

    async def open_data_plane(self, mode: str) -> str:
        """Hand the server a shared-memory region where it can take one (see
        :mod:`rlmesh.client.data_plane`); returns the path chosen, in words."""
        assert self.hello is not None
        region, note = await open_region(self, self.hello, self._unix, mode)
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
        region = self._p.region
        if region is not None and region.owner == rid:
            region.owner = 0

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
                raise exception_for_error(ErrorBody.decode(frame))
            try:
                if ftype is not mtype and not (
                    region is not None and region.owner == frame.request_id and ftype is _SHARED.get(mtype)
                ):
                    raise ProtocolError(f"the server answered a {mtype.name} request with {ftype.name}")
                value = decode(frame)
                keep = keep_region
                return value
            except ProtocolError as exc:
                self.abort_threadsafe()
                raise ProtocolError(f"{exc}; the connection was closed") from exc
        finally:
            if not keep and region is not None and region.owner == frame.request_id:
                region.owner = 0  # its arrays are copied out (or there were none): free again

    def abort(self) -> None:
        """Drop the connection at once (on the loop), and unmap its region."""
        self._closed_here = True
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
        self._closed_here = True
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


class Listener:
    """A Unix socket that one server dials into; see :meth:`ClientConnection.listen`."""

    def __init__(self, path: str, max_frame_size: int) -> None:
        self.path = path
        self.address = f"unix://{path}"
        self._max_frame_size = max_frame_size
        self._server: asyncio.AbstractServer | None = None
        self._first: asyncio.Future[_Protocol] | None = None
        self._sock: socket.socket | None = None
        self._adopted = False

    async def start(self) -> None:
        """Bind and listen (the socket file exists when this returns)."""
        loop = asyncio.get_running_loop()
        self._first = loop.create_future()

        def factory() -> _Protocol:
            proto = _Protocol(self._max_frame_size)
            assert self._first is not None
            if self._first.done():
                proto.connection_made = _refuse  # type: ignore[method-assign]
            else:
                self._first.set_result(proto)
            return proto

        # The socket is made here, so that a start cancelled inside create_unix_server (which
        # yields once after binding) cannot leave it open.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            sock.listen(8)
            sock.setblocking(False)
            self._server = await loop.create_unix_server(factory, sock=sock)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    async def accept(self, *, token: bytes | None = None, data_plane: str = "auto") -> ClientConnection:
        """Wait for the server to dial in, then handshake; only the first connection counts.

        Raises:
            ProtocolError: The server broke the protocol.
            TransportError: The connection was lost during the handshake.
        """
        assert self._first is not None and self._server is not None
        proto = await asyncio.shield(self._first)
        self._server.close()  # one server per listener: nobody else gets in
        while proto.transport is None:  # connection_made runs right after the factory
            await asyncio.sleep(0)
        conn = ClientConnection(proto, self.address)
        self._adopted = True
        try:
            conn.hello = await conn._handshake(self._max_frame_size, token, False)
            await conn.open_data_plane(data_plane)
        except BaseException:
            conn.abort()
            raise
        return conn

    def close(self) -> None:
        """Stop listening, and drop a connection that was never handed to a ClientConnection."""
        if self._server is not None:
            self._server.close()
        if self._sock is not None:
            self._sock.close()
        first = self._first
        if first is not None and first.done() and not first.cancelled() and not self._adopted:
            transport = first.result().transport
            if transport is not None:
                transport.abort()


def _refuse(transport: asyncio.BaseTransport) -> None:
    cast(asyncio.Transport, transport).abort()


def _expire(p: _Protocol, rid: int, fut: asyncio.Future[Frame], timeout: float) -> None:
    p.abandon(rid)
    if not fut.done():
        fut.set_exception(RLMeshTimeoutError(f"no reply from the env server within request_timeout={timeout}s"))
