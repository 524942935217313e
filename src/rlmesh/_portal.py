"""The one event-loop thread that runs the async core for the sync classes, and the bridge to it.

A single anyio ``BlockingPortal`` is started on first use, on a daemon thread,
and lives as long as the process: a sync call hands a coroutine to it and waits.
There is never a loop or a thread per call. The thread is a daemon so that a
forgotten env cannot hang interpreter exit; an ``atexit`` hook stops the loop
(sandboxes still running then are removed by their own exit hook, in
:mod:`rlmesh.sandbox.container`).

The hot path (:func:`request`) does not start a portal task at all: the request
is written on the socket from the caller's own thread
(:func:`~rlmesh.client.caller_thread.send_from_thread`; where only the
loop can write it, TLS for one, with one ``call_soon_threadsafe``). While the loop
is idle the caller reads the reply itself (:func:`~rlmesh.client.caller_thread.read_replies`);
otherwise the reply wakes the waiting thread straight from the connection's
``data_received``.

After ``os.fork()`` the child has no loop thread (threads do not survive a
fork), so the child's state is reset: its first sync call starts its own loop.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from .client.caller_thread import SendPath, read_replies
from .errors import RLMeshError, RLMeshTimeoutError, TransportError

if TYPE_CHECKING:
    from .client.connection import ClientConnection
    from .client.core import Exchange, Request
    from .client.env import _AsyncRemoteBase
    from .protocol import Frame, MessageType

__all__ = ["call", "check_caller", "exchange", "get_portal", "in_portal_thread", "request", "request_many"]

T = TypeVar("T")
log = logging.getLogger("rlmesh")

_lock = threading.Lock()
_portal: BlockingPortal | None = None
_thread: threading.Thread | None = None
_shut_down = False
_atexit_registered = False


def _backend() -> tuple[str, dict[str, Any]]:
    try:
        import uvloop  # noqa: F401  (imported only to see whether it is installed)
    except ImportError:
        return "asyncio", {}
    return "asyncio", {"use_uvloop": True}


def get_portal() -> BlockingPortal:
    """Return the process-wide portal, starting its thread on first use.

    Raises:
        RLMeshError: The loop thread cannot start, or it was shut down (interpreter exit).
    """
    global _portal, _thread, _atexit_registered
    portal = _portal
    if portal is not None:
        return portal
    with _lock:
        if _portal is not None:
            return _portal
        if _shut_down:
            raise RLMeshError("rlmesh's event loop has shut down (the interpreter is exiting); "
                              "sync rlmesh classes cannot be used any more in this process")
        ready = threading.Event()
        box: list[BlockingPortal] = []
        failure: list[BaseException] = []

        async def main() -> None:
            async with BlockingPortal() as p:
                box.append(p)
                ready.set()
                await p.sleep_until_stopped()

        def run() -> None:
            backend, options = _backend()
            try:
                anyio.run(main, backend=backend, backend_options=options)
            except BaseException as exc:  # reported to the thread waiting below
                failure.append(exc)
            finally:
                ready.set()

        thread = threading.Thread(target=run, name="rlmesh-loop", daemon=True)
        thread.start()
        ready.wait()
        if not box:
            raise RLMeshError(f"rlmesh's event-loop thread failed to start: {failure[0]!r}") from failure[0]
        _portal, _thread = box[0], thread
        if not _atexit_registered:
            atexit.register(_shutdown)
            _atexit_registered = True
        return _portal


def in_portal_thread() -> bool:
    """Whether the caller runs on the portal's event-loop thread."""
    return _thread is not None and threading.current_thread() is _thread


def call(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``func(*args)`` on the shared loop and wait for its result.

    Raises:
        RLMeshError: Called from the loop thread itself (where waiting would deadlock), or
            the loop has shut down.
    """
    check_caller()
    portal = get_portal()
    try:
        return portal.call(func, *args)
    except RuntimeError as exc:
        if _portal is not portal or "not running" in str(exc):
            raise RLMeshError(f"rlmesh's event loop stopped while this call was made: {exc}") from exc
        raise


def check_caller() -> None:
    """Raise if called on the loop thread, where a blocking wait would deadlock.

    Raises:
        RLMeshError: Called from the loop thread itself.
    """
    if in_portal_thread():
        raise RLMeshError(
            "a sync rlmesh class was called from inside rlmesh's own event loop; "
            "in async code use the Async* classes (AsyncRemoteEnv, AsyncSandboxEnv, ...) instead"
        )


class _ThreadSlot:
    """The reply slot of a request made from a thread other than the loop's.

    It stands where an ``asyncio.Future`` would (it has the ``done``/``set_result``/
    ``set_exception`` that the connection uses), so the reply wakes the waiting thread
    straight from ``data_received`` (or the caller reads it itself): no task, no coroutine.
    Slots made with a shared :class:`_Countdown` wake their thread once, when the last is done.
    """

    __slots__ = ("_countdown", "_done", "_exc", "_lock", "_value", "rid")

    def __init__(self, countdown: _Countdown | None = None) -> None:
        self._countdown = countdown
        if countdown is None:
            self._lock = threading.Lock()
            self._lock.acquire()
        self._done = False
        self._value: Frame | None = None
        self._exc: BaseException | None = None
        self.rid = 0

    def done(self) -> bool:
        return self._done

    def set_result(self, value: Frame, /) -> None:
        self._value, self._done = value, True
        self._wake()

    def set_exception(self, exc: BaseException, /) -> None:
        self._exc, self._done = exc, True
        self._wake()

    def _wake(self) -> None:
        if self._countdown is None:
            self._lock.release()
        else:
            self._countdown.one_done()

    def wait(self, timeout: float | None) -> Frame:
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError
        return self.result()

    def result(self) -> Frame:
        if self._exc is not None:
            raise self._exc
        assert self._value is not None
        return self._value


class _Countdown:
    """Wakes the one thread waiting on several slots once, when the last of them is done."""

    __slots__ = ("_count_lock", "_left", "_lock")

    def __init__(self, n: int) -> None:
        self._left = n
        self._count_lock = threading.Lock()
        self._lock = threading.Lock()
        self._lock.acquire()

    def one_done(self) -> None:
        with self._count_lock:  # the loop thread, or the waiting thread itself (a failed send)
            self._left -= 1
            last = self._left == 0
        if last:
            self._lock.release()

    def wait(self, timeout: float | None) -> bool:
        return self._lock.acquire(timeout=-1 if timeout is None else timeout)


def _submit(conn: ClientConnection, mtype: MessageType, body: Any, slot: _ThreadSlot) -> None:
    # On the loop: send a request whose reply goes to ``slot``; a failure goes to the waiting thread.
    try:
        slot.rid = conn.submit(mtype, body, slot)
    except BaseException as exc:
        if not slot.done():
            slot.set_exception(exc)
        if not isinstance(exc, Exception):
            raise


def _send_here(conn: ClientConnection, mtype: MessageType, body: Any, slot: _ThreadSlot) -> SendPath:
    # Write the request from this thread when the connection allows it (one thread hop fewer
    # per request); a failure goes to the slot, as on the loop.
    try:
        return conn.send_from_thread(mtype, body, slot)
    except Exception as exc:  # reported through the slot, like the loop's
        slot.set_exception(exc)
        return SendPath.LOOP_READS


def request(core: _AsyncRemoteBase, mtype: MessageType, body: Any) -> Frame:
    """Send a request on ``core``'s connection from this (non-loop) thread and wait for the reply.

    Raises:
        RLMeshTimeoutError: No reply within the core's ``request_timeout``.
        TransportError: The connection failed (explained by the core, e.g. a sandbox's exit).
    """
    check_caller()
    conn = core.connection
    slot = _ThreadSlot()
    loop = conn.loop
    timeout = core.request_timeout
    try:
        sent = _send_here(conn, mtype, body, slot)
        if sent is SendPath.LOOP_SENDS:
            try:
                loop.call_soon_threadsafe(_submit, conn, mtype, body, slot)
            except RuntimeError as exc:  # the loop is closed
                raise RLMeshError(f"rlmesh's event loop is not running: {exc}") from exc
        if sent is SendPath.THREAD_READS:
            read_replies([(conn, slot)], timeout)
            return slot.result()
        return slot.wait(timeout)
    except TimeoutError:
        loop.call_soon_threadsafe(_forget, conn, slot)
        raise RLMeshTimeoutError(f"no reply from the env server within request_timeout={timeout}s") from None
    except TransportError as exc:
        explained = call(core.explain, exc)
        if explained is exc:
            raise
        raise explained from exc
    finally:
        conn.stop_reading_here()  # a no-op unless interrupted while this thread still reads


def exchange(ex: Exchange[T]) -> T:
    """Write an exchange's requests from this (non-loop) thread, wait for their replies (once),
    and return its result (see :mod:`rlmesh.client.core`).

    Raises:
        RLMeshError: The first failure, by request order, named by the exchange (a shard).
    """
    requests = ex.requests
    try:
        if len(requests) == 1:
            core, mtype, body = requests[0]
            frames = [request(core, mtype, body)]
        else:  # several, or none (a masked reset that resets no shard)
            frames = request_many(requests) if requests else []
    except RLMeshError as exc:
        if ex.name_error is None:
            raise
        raise ex.name_error(exc, getattr(exc, "request_index", 0)) from None
    return ex.finish(frames)


def request_many(requests: Sequence[Request]) -> list[Frame]:
    """:func:`request` to several cores at once (the shards of a vector env): every request is
    written before any reply is awaited (from this thread; those only the loop can write, in
    one hop to it), and this thread is woken once, when the last reply is in.

    Raises:
        RLMeshError: The first failure, by request order (timeouts, lost connections, explained).
    """
    check_caller()
    countdown = _Countdown(len(requests))
    slots = [_ThreadSlot(countdown) for _ in requests]
    conns = [core.connection for core, _, _ in requests]

    loop = conns[0].loop
    timeouts = [core.request_timeout for core, _, _ in requests if core.request_timeout is not None]
    timeout = min(timeouts) if timeouts else None
    start = time.monotonic()
    handed_back = False
    try:
        rest, reading = [], []
        for conn, slot, (_, mtype, body) in zip(conns, slots, requests, strict=True):
            sent = _send_here(conn, mtype, body, slot)
            if sent is SendPath.LOOP_SENDS:
                rest.append((conn, slot, mtype, body))
            elif sent is SendPath.THREAD_READS:
                reading.append((conn, slot))

        def submit_rest() -> None:  # on the loop
            for conn, slot, mtype, body in rest:
                _submit(conn, mtype, body, slot)

        if rest:
            try:
                loop.call_soon_threadsafe(submit_rest)
            except RuntimeError as exc:  # the loop is closed
                raise RLMeshError(f"rlmesh's event loop is not running: {exc}") from exc
        if reading:
            with contextlib.suppress(TimeoutError):  # judged below, slot by slot
                read_replies(reading, timeout)  # hands every connection back as it returns
        handed_back = True
    finally:
        if not handed_back:  # interrupted while this thread may still read: hand reading back
            for conn in conns:
                conn.stop_reading_here()
    all_in = countdown.wait(None if timeout is None else max(timeout - (time.monotonic() - start), 0.0))
    frames: list[Frame] = []
    failure: tuple[int, BaseException] | None = None
    for i, (core, conn, slot) in enumerate(zip((c for c, _, _ in requests), conns, slots, strict=True)):
        if not all_in and not slot.done():
            loop.call_soon_threadsafe(_forget, conn, slot)
            failure = failure or (i, RLMeshTimeoutError(
                f"no reply from the env server within request_timeout={core.request_timeout}s"))
            continue
        try:
            frames.append(slot.result())
        except BaseException as err:  # the first failure is raised once all are in
            failure = failure or (i, err)
    if failure is not None:
        index, error = failure
        if isinstance(error, TransportError):
            explained = call(requests[index][0].explain, error)
            if explained is not error:
                explained.__cause__ = error
                error = explained
        error.request_index = index  # type: ignore[attr-defined]  # which request failed, for the exchange to name it
        raise error
    return frames


def _forget(conn: Any, slot: _ThreadSlot) -> None:
    if slot.rid:
        conn.abandon(slot.rid)


def _shutdown() -> None:
    global _portal, _thread, _shut_down
    with _lock:
        portal, _portal, _thread, _shut_down = _portal, None, None, True
    if portal is None:
        return
    try:
        portal.call(portal.stop)
    except Exception as exc:  # exit-time: report, never raise
        log.debug("stopping rlmesh's event loop: %r", exc)


def _after_fork_in_child() -> None:
    # The loop thread did not survive the fork; its portal, lock and clients are unusable here.
    global _lock, _portal, _thread
    _lock = threading.Lock()
    _portal = None
    _thread = None


os.register_at_fork(after_in_child=_after_fork_in_child)
