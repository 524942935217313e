"""The one event-loop thread that runs the async core for the sync classes, and the bridge to it.

A single anyio ``BlockingPortal`` is started on first use, on a daemon thread,
and lives as long as the process: a sync call hands a coroutine to it and waits.
There is never a loop or a thread per call. The thread is a daemon so that a
forgotten env cannot hang interpreter exit; an ``atexit`` hook stops the loop
(sandboxes still running then are removed by their own exit hook, in
:mod:`rlmesh.sandbox.container`).

This module only runs the loop. The hot path does not start a portal task at all: the sync
shells send their plans from the caller's own thread
(:func:`rlmesh.client.caller_thread.send_plan`).

After ``os.fork()`` the child has no loop thread (threads do not survive a
fork), so the child's state is reset: its first sync call starts its own loop.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from .errors import RLMeshError

__all__ = ["call", "check_caller", "get_portal", "in_portal_thread"]

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
