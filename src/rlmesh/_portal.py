"""The one event-loop thread that runs the async core for the sync classes.

A single anyio ``BlockingPortal`` is started on first use, on a daemon thread,
and lives as long as the process: a sync call hands a coroutine to it and waits.
There is never a loop or a thread per call. The thread is a daemon so that a
forgotten env cannot hang interpreter exit; an ``atexit`` hook stops the loop
(sandboxes still running then are removed by their own ``atexit`` hook, in
:mod:`rlmesh.sandbox.container`).
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from .errors import RLMeshError

__all__ = ["call", "check_caller", "get_portal", "in_portal_thread"]

T = TypeVar("T")

_lock = threading.Lock()
_portal: BlockingPortal | None = None
_thread: threading.Thread | None = None


def _backend() -> tuple[str, dict[str, Any]]:
    try:
        import uvloop  # noqa: F401, PLC0415

        return "asyncio", {"use_uvloop": True}
    except ImportError:
        return "asyncio", {}


def get_portal() -> BlockingPortal:
    """Return the process-wide portal, starting its thread on first use."""
    global _portal, _thread
    portal = _portal
    if portal is not None:
        return portal
    with _lock:
        if _portal is not None:
            return _portal
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
        atexit.register(_shutdown)
        return _portal


def in_portal_thread() -> bool:
    """Whether the caller runs on the portal's event-loop thread."""
    return _thread is not None and threading.current_thread() is _thread


def call(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``func(*args)`` on the shared loop and wait for its result.

    Raises:
        RLMeshError: Called from the loop thread itself, where waiting would deadlock.
    """
    check_caller()
    return get_portal().call(func, *args)


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
    portal = _portal
    if portal is None:
        return
    try:
        portal.call(portal.stop)
    except Exception:  # noqa: S110
        pass
