"""The asyncio side of a client connection: :class:`ReplyProtocol`.

A reply resolves its request's slot straight from ``data_received``, so a request costs one
write, one read callback and one future, and several requests may be in flight at once
(pipelining). A slot (:class:`ReplySlot`) is anything with ``done``/``set_result``/``set_exception``:
an ``asyncio.Future`` for async callers, or the sync layer's thread slot (:mod:`rlmesh._portal`),
which wakes a blocked thread without a task. Exactly one side reads the socket at a time
(:class:`Reader`): the loop, or a sync caller's thread (:mod:`rlmesh.client.caller_thread`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import os
import socket
import threading
import weakref
from typing import Any, Protocol, cast

from ..errors import ConnectionClosedError, EnvClosedError, ProtocolError, RLMeshError, RLMeshTimeoutError, UnencodableError
from ..protocol import (
    AuthProof,
    CallRequest,
    ClientHello,
    Connection,
    ErrorBody,
    Frame,
    MessageType,
    ResetRequest,
    encode_message,
    exception_for_error,
)
from .data_plane import ClientRegion

__all__ = ["SHARED_REPLY", "Reader", "ReplyProtocol", "ReplySlot", "encode_request", "expire_request", "refuse_connection"]

_ID_MASK = 0xFFFFFFFF
_MAX_ABANDONED = 4096


class ReplySlot(Protocol):
    """Where a reply goes: an ``asyncio.Future[Frame]`` or a thread slot."""

    def done(self) -> bool: ...
    def set_result(self, result: Frame, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


class Reader(enum.Enum):
    """Who reads a connection's socket."""

    LOOP = "loop"
    """The transport, on the loop."""
    THREAD = "thread"
    """A sync caller's thread, on the connection's own descriptor, while the transport is paused."""
    NONE = "none"
    """Nobody: the transport is paused and nothing is pending; the next sync caller reads."""


_protocols: weakref.WeakSet[ReplyProtocol] = weakref.WeakSet()
_fork_lock = threading.Lock()  # no fork between a descriptor's dup and its registration


class ReplyProtocol(asyncio.Protocol):
    """One connection's transport: frames out, replies matched to their requests' slots by id.

    It is shared by the loop and the sync callers' threads (:mod:`rlmesh.client.caller_thread`):
    every write, request id and state change is under :attr:`send_lock`.
    """

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
        # Who reads the socket (see Reader). Once a sync caller has used the connection
        # (sync_wanted), the loop pauses whenever nothing is pending, and the next sync caller
        # reads its own reply: one thread wake fewer per request.
        self.reader = Reader.LOOP
        self.reader_thread = 0  # the thread reading, while reader is Reader.THREAD
        self.paused = False
        self.sync_wanted = False
        self.region: ClientRegion | None = None  # the shared-memory data plane, once handed over
        self.closed_here = False  # this side closed (or aborted) the connection

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
            if self.reader is Reader.THREAD:
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
                        self.release_region(rid)  # nobody copies its arrays: the region is free again
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
        except Exception as exc:  # a bug on this side must not wedge the caller
            fail(ProtocolError(f"could not handle a frame from the server ({type(exc).__name__}: {exc}); "
                               "the connection was closed"))

    def submit(self, mtype: MessageType, body: Any, slot: ReplySlot) -> int:
        """Encode and send a request whose reply goes to ``slot``; returns its request id.

        Must run on the loop. Failures are raised, never left in ``slot``.

        Raises:
            EnvClosedError: This side closed the connection.
            TransportError: The connection was lost.
            InvalidArgumentError: The body cannot be encoded.
        """
        if self.lost is not None:
            raise self.lost
        transport = self.transport
        if transport is None or transport.is_closing():
            if self.closed_here:
                raise EnvClosedError("the connection to the env server is closed")
            # The peer hung up and connection_lost has not run yet.
            raise ConnectionClosedError("the env server closed the connection")
        with self.send_lock:
            rid, data = encode_request(self, mtype, body)
            self.pending[rid] = slot
            self.write(data)
            self.read_on_loop()
        return rid

    def release_region(self, rid: int) -> None:
        """Free the shared region if request ``rid`` holds it (its arrays are copied out, or it was
        never sent, or nobody will read its reply). Any thread."""
        region = self.region
        if region is not None and region.owner == rid:
            region.owner = 0

    def _pause_if_idle(self) -> None:
        # On the loop: nothing is pending, so the next sync caller may read its own reply.
        with self.send_lock:
            transport = self.transport
            if self.reader is Reader.LOOP and not self.pending and not self.conn.buffered and self.lost is None \
                    and self.direct is not None and transport is not None and not transport.is_closing():
                transport.pause_reading()
                self.paused, self.reader = True, Reader.NONE

    def read_on_loop(self) -> None:
        # Under send_lock, on the loop: the loop must read (a request of its own, or the rest of
        # a sync caller's). A thread reading now hands over when it stops.
        if self.reader is Reader.NONE:
            self.reader = Reader.LOOP
            self._resume()

    def _resume(self) -> None:
        # On the loop, under send_lock.
        if self.reader is Reader.LOOP and self.paused and self.transport is not None and not self.transport.is_closing():
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
            if self.reader is not Reader.THREAD or self.reader_thread != threading.get_ident():
                return
            if self.lost is None and (self.pending or self.conn.buffered):
                self.reader = Reader.LOOP
                with contextlib.suppress(RuntimeError):
                    self.loop.call_soon_threadsafe(self.resume_soon)
            else:
                self.reader = Reader.NONE
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
SHARED_REPLY = {MessageType.STEP: MessageType.STEP_SHARED, MessageType.RESET: MessageType.RESET_SHARED}
"""The request types whose reply may leave its arrays in the shared region, and that reply's type."""
_SHARED_TYPES = frozenset(SHARED_REPLY.values())


def _resolve(fut: asyncio.Future[Frame], frame: Frame) -> None:
    if not fut.done():
        fut.set_result(frame)


def _reject(fut: asyncio.Future[Frame], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def encode_request(p: ReplyProtocol, mtype: MessageType, body: Any) -> tuple[int, bytes]:
    # Under p.send_lock: the next request id, and the frame. Encoding comes before the request is
    # registered, so that a body that cannot be encoded leaves nothing pending.
    rid = p.next_id
    region = p.region
    if region is not None and region.owner == 0 and mtype in SHARED_REPLY:
        # The region is free: this reply may leave its arrays there (one such request at a time).
        mtype = SHARED_REPLY[mtype]
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


def refuse_connection(transport: asyncio.BaseTransport) -> None:
    """A ``connection_made`` that drops the connection at once (a listener takes only one)."""
    cast(asyncio.Transport, transport).abort()


def expire_request(p: ReplyProtocol, rid: int, fut: asyncio.Future[Frame], timeout: float) -> None:
    p.abandon(rid)
    if not fut.done():
        fut.set_exception(RLMeshTimeoutError(f"no reply from the env server within request_timeout={timeout}s"))
