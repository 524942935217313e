"""The caller-thread I/O layer: a sync caller writes its requests, and reads their replies, on
its own thread.

It is the sibling of the asyncio layer (:class:`~rlmesh.client.transport.ReplyProtocol`, on the
loop): both drive the same sans-I/O parser and reply matching, over the same socket, and exactly
one side reads at a time (:class:`~rlmesh.client.transport.Reader`), under the connection's send
lock. :func:`send_plan` is the sync form of the hot path's *send*
(:mod:`rlmesh.client.pipeline`): every request of a plan written from this thread (no hop to the
loop), then every reply awaited once, read here when the loop is idle (it pauses reading when
nothing is pending on a connection sync callers use), else delivered by the loop's
``data_received`` straight into this thread's slots. Only a connection the loop must write
(TLS, bytes still queued) takes one ``call_soon_threadsafe``.
"""

from __future__ import annotations

import contextlib
import enum
import select
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .. import _portal
from ..errors import ConnectionClosedError, RLMeshError, RLMeshTimeoutError, TransportError
from ..protocol import Frame, MessageType
from .transport import Reader, ReplyProtocol, encode_request

if TYPE_CHECKING:
    from .pipeline import Plan

__all__ = ["SendPath", "ThreadSlot", "read_replies", "send_from_thread", "send_plan"]

T = TypeVar("T")
_READ_SIZE = 1 << 18


class SendPath(enum.IntEnum):
    """What :func:`send_from_thread` did (false only when it sent nothing)."""

    LOOP_SENDS = 0
    """Nothing was sent: only the loop can send it (TLS, bytes still queued, a closing transport)."""
    LOOP_READS = 1
    """Sent; the reply comes through the loop into the slot."""
    THREAD_READS = 2
    """Sent, and the loop is not reading: this thread reads the reply, with :func:`read_replies`."""


class _Wake:
    """Wakes the one thread waiting on a plan's slots once, when the last of them is done."""

    __slots__ = ("_count_lock", "_left", "_lock", "_single")

    def __init__(self, n: int) -> None:
        self._left = n
        self._single = n == 1
        self._count_lock = threading.Lock()
        self._lock = threading.Lock()
        self._lock.acquire()

    def one_done(self) -> None:
        if self._single:  # one slot: nobody else counts
            self._lock.release()
            return
        with self._count_lock:  # the loop thread, or the waiting thread itself
            self._left -= 1
            last = self._left == 0
        if last:
            self._lock.release()

    def wait(self, timeout: float | None) -> bool:
        return self._lock.acquire(timeout=-1 if timeout is None else timeout)


class ThreadSlot:
    """The reply slot of a request written from a caller's thread.

    It stands where an ``asyncio.Future`` would (the ``done``/``set_result``/``set_exception`` the
    transport calls), so a reply wakes the waiting thread straight from ``data_received`` (or
    this thread reads it itself): no task, no coroutine.
    """

    __slots__ = ("_exc", "_value", "_wake", "rid")

    def __init__(self, wake: _Wake) -> None:
        self._wake = wake
        self._value: Frame | None = None
        self._exc: BaseException | None = None
        self.rid = 0

    def done(self) -> bool:
        return self._value is not None or self._exc is not None

    def set_result(self, value: Frame, /) -> None:
        self._value = value
        self._wake.one_done()

    def set_exception(self, exc: BaseException, /) -> None:
        self._exc = exc
        self._wake.one_done()

    def result(self) -> Frame:
        if self._exc is not None:
            raise self._exc
        assert self._value is not None
        return self._value


def send_plan(plan: Plan[T]) -> T:
    """Send a plan from this (non-loop) thread: write every request, wait once for every reply,
    and return the plan's result.

    Raises:
        RLMeshError: The first failure by request order (timeouts, lost connections explained by
            their core, e.g. a sandbox's exit), named by the plan (a shard).
    """
    requests = plan.requests
    if not requests:
        return plan.finish([])
    _portal.check_caller()
    wake = _Wake(len(requests))
    slots = [ThreadSlot(wake) for _ in requests]
    protocols: list[ReplyProtocol] = []
    timeout: float | None = None
    for i, (core, _, _) in enumerate(requests):
        try:
            protocols.append(core.connection.protocol)
        except RLMeshError as exc:
            raise plan.named(exc, i) from None
        if core.request_timeout is not None and (timeout is None or core.request_timeout < timeout):
            timeout = core.request_timeout
    start = time.monotonic()
    loop = protocols[0].loop
    handed_back = False
    try:
        loop_sends, reading = [], []
        for p, slot, (_, mtype, body) in zip(protocols, slots, requests, strict=True):
            try:
                path = send_from_thread(p, mtype, body, slot)
            except Exception as exc:  # reported through the slot, as the loop's would be
                slot.set_exception(exc)
                continue
            if path is SendPath.THREAD_READS:
                reading.append((p, slot))
            elif path is SendPath.LOOP_SENDS:
                loop_sends.append((p, slot, mtype, body))
        if loop_sends:
            try:
                loop.call_soon_threadsafe(_submit_all, loop_sends)
            except RuntimeError as exc:  # the loop is closed
                raise RLMeshError(f"rlmesh's event loop is not running: {exc}") from exc
        if reading:
            with contextlib.suppress(TimeoutError):  # judged below, slot by slot
                read_replies(reading, timeout)  # hands every connection back as it returns
        handed_back = True
    finally:
        if not handed_back:  # interrupted while this thread may still read: hand reading back
            for p in protocols:
                p.stop_reading_here()
    all_in = wake.wait(None if timeout is None else max(timeout - (time.monotonic() - start), 0.0))
    frames: list[Frame] = []
    failed: dict[int, BaseException] = {}  # by request index, in order: the first is raised
    for i, (p, slot) in enumerate(zip(protocols, slots, strict=True)):
        if not all_in and not slot.done():
            loop.call_soon_threadsafe(_forget, p, slot)
            failed[i] = RLMeshTimeoutError(
                f"no reply from the env server within request_timeout={requests[i][0].request_timeout}s")
            continue
        try:
            frames.append(slot.result())
        except BaseException as exc:  # the first failure is raised once all are in
            failed[i] = exc
    if not failed:
        return plan.finish(frames)
    if plan.partial is not None and all(isinstance(exc, RLMeshError) for exc in failed.values()):
        return _finish_partial(plan, frames, failed)
    for p, frame in zip(protocols, frames, strict=False):
        p.release_region(frame.request_id)  # frames nobody will decode
    index, error = next(iter(failed.items()))
    error = _explained(plan, index, error)
    if isinstance(error, RLMeshError):
        raise plan.named(error, index) from error.__cause__
    raise error


def _explained(plan: Plan[Any], i: int, error: BaseException) -> BaseException:
    # A lost connection, explained by its core where it can (a sandbox: how its container ended).
    if isinstance(error, TransportError):
        explained = _portal.call(plan.requests[i][0].explain, error)
        if explained is not error:
            explained.__cause__ = error
            return explained
    return error


def _finish_partial(plan: Plan[T], frames: list[Frame], failed: dict[int, BaseException]) -> T:
    # Plan.partial: the frames in request order (None where a request failed), and each failure
    # explained and named.
    received = iter(frames)
    slots: list[Frame | None] = [None if i in failed else next(received) for i in range(len(plan.requests))]
    failures: dict[int, RLMeshError] = {}
    for i, error in failed.items():
        explained = _explained(plan, i, error)
        assert isinstance(explained, RLMeshError)
        failures[i] = plan.named(explained, i)
    assert plan.partial is not None
    return plan.partial(slots, failures)


def _submit_all(sends: list[tuple[ReplyProtocol, ThreadSlot, MessageType, Any]]) -> None:
    # On the loop: send requests only the loop can write; a failure goes to the waiting thread.
    for p, slot, mtype, body in sends:
        try:
            slot.rid = p.submit(mtype, body, slot)
        except Exception as exc:
            if not slot.done():
                slot.set_exception(exc)


def _forget(p: ReplyProtocol, slot: ThreadSlot) -> None:
    if slot.rid:
        p.abandon(slot.rid)


def send_from_thread(p: ReplyProtocol, mtype: MessageType, body: Any, slot: ThreadSlot) -> SendPath:
    """Send a request from a thread other than the loop's, writing it on the socket from this
    thread (no hop to the loop); see :class:`SendPath` for what it did.

    If this thread is interrupted while the frame may be partly written, the connection is
    dropped (what follows on the stream could not be read).

    Raises:
        TransportError: The connection was lost.
        InvalidArgumentError: The body cannot be encoded.
    """
    with p.send_lock:
        direct, transport = p.direct, p.transport
        if p.lost is not None:
            raise p.lost
        if direct is None or transport is None or transport.is_closing() or p.backlog \
                or transport.get_write_buffer_size():
            return SendPath.LOOP_SENDS
        rid, data = encode_request(p, mtype, body)
        p.pending[rid] = slot
        slot.rid = rid
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
                p.release_region(rid)  # never sent: the loop sends it again, under a new id
                return SendPath.LOOP_SENDS  # the loop's write reports the failure (and the loss) as usual
            if sent < len(data):
                p.backlog.append(data[sent:])
                p.loop.call_soon_threadsafe(p.flush_backlog)
            sending = False
            p.sync_wanted = True
            if p.reader is Reader.NONE:
                p.reader, p.reader_thread = Reader.THREAD, threading.get_ident()
                return SendPath.THREAD_READS
        finally:
            if sending:  # interrupted (KeyboardInterrupt) with part of the frame maybe sent
                p.pending.pop(rid, None)
                p.loop.call_soon_threadsafe(p.fail, ConnectionClosedError(
                    "a request was interrupted while it was being written; the connection was dropped"))
    return SendPath.LOOP_READS


def read_replies(readers: Sequence[tuple[ReplyProtocol, ThreadSlot]], timeout: float | None) -> None:
    """Read the sockets of connections this thread reads for (``send_from_thread`` said so) until
    every slot is done, dispatching what comes in; then hand reading back (also when interrupted).

    One poll set serves the whole wait, and only the connections that had something to read are
    looked at after each wake: a gather over K connections costs O(K), not O(K^2).

    Raises:
        TimeoutError: A slot was not done within ``timeout`` seconds.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    active = dict(readers)
    poller = select.poll()
    by_fd: dict[int, ReplyProtocol] = {}
    fd_of: dict[ReplyProtocol, int] = {}
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


def _read_once(p: ReplyProtocol) -> None:
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
