"""The caller-thread path: sync callers write requests, and read replies, from their own thread.

A sync caller (:mod:`rlmesh._portal`) writes its request on the socket itself
(:func:`send_from_thread`: no hop to the loop) and, once the loop is idle (it pauses reading
when nothing is pending on a connection sync callers use), reads its reply there too
(:func:`read_replies`), with the same parser and the same checks as the loop. Exactly one side
reads at a time (:class:`~rlmesh.client.transport.Reader`), under the connection's send lock.
"""

from __future__ import annotations

import enum
import select
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ConnectionClosedError
from ..protocol import MessageType
from .transport import Reader, ReplyProtocol, ReplySlot, encode_request

if TYPE_CHECKING:
    from .connection import ClientConnection

__all__ = ["SendPath", "ThreadSlot", "read_replies", "send_from_thread"]

_READ_SIZE = 1 << 18


class ThreadSlot(ReplySlot, Protocol):
    """A reply slot of a sync caller's thread, which records its request's id (to forget it)."""

    rid: int


class SendPath(enum.IntEnum):
    """What :func:`send_from_thread` did (false only when it sent nothing)."""

    LOOP_SENDS = 0
    """Nothing was sent: only the loop can send it (TLS, bytes still queued, a closing transport)."""
    LOOP_READS = 1
    """Sent; the reply comes through the loop into the slot."""
    THREAD_READS = 2
    """Sent, and the loop is not reading: this thread reads the reply, with :func:`read_replies`."""


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
                if p.region is not None and p.region.owner == rid:
                    p.region.owner = 0  # never sent: the loop sends it again, under a new id
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


def read_replies(readers: Sequence[tuple[ClientConnection, ReplySlot]], timeout: float | None) -> None:
    """Read the sockets of connections this thread reads for (``send_from_thread`` said so) until
    every slot is done, dispatching what comes in; then hand reading back (also when interrupted).

    One poll set serves the whole wait, and only the connections that had something to read are
    looked at after each wake: a gather over K connections costs O(K), not O(K^2).

    Raises:
        TimeoutError: A slot was not done within ``timeout`` seconds.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    active = {conn.protocol: slot for conn, slot in readers}
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
