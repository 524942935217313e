"""Shared test helpers: an in-process server thread, the async/sync adapter, assert_same."""

from __future__ import annotations

import asyncio
import math
import os
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from rlmesh import AsyncRemoteEnv, AsyncRemoteVectorEnv, RemoteEnv, RemoteVectorEnv
from rlmesh._address import parse_address
from rlmesh.errors import ServerBusyError
from rlmesh.server import EnvServer

__all__ = ["FLAVOURS", "Flavoured", "ServerThread", "assert_same", "open_env", "open_when_free"]

FLAVOURS = ("async", "sync")


class ServerThread:
    """An ``EnvServer`` running ``serve_async`` on its own thread and event loop.

    Readiness is checked on the server's loop itself: ``create_unix_server``
    binds and listens in one loop step, so "the socket file exists" seen from
    the loop means "accepting connections" (seen from another thread it would
    race with listen()). For ``tcp://host:0`` the port is known once bound.
    """

    def __init__(self, env_or_factory: Any, address: str, **server_kwargs: Any) -> None:
        self.server = EnvServer(env_or_factory, address, ready_message=None, **server_kwargs)
        self.loop = asyncio.new_event_loop()
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-env-server", daemon=True)

    @property
    def address(self) -> str:
        return self.server.address

    def _listening(self) -> bool:
        addr = parse_address(self.server.address)
        if addr.path is not None:
            return os.path.exists(addr.path)
        return addr.port != 0

    async def _main(self) -> None:
        task = asyncio.ensure_future(self.server.serve_async(install_signal_handlers=False))
        while not task.done() and not self._listening():
            await asyncio.sleep(0.002)
        self._ready.set()
        try:
            await task
        finally:
            # Let the aborted transports run their connection_lost callbacks.
            for _ in range(5):
                await asyncio.sleep(0)

    def _run(self) -> None:
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            self._ready.set()
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def start(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(30), "the env server did not start listening"
        if self.error is not None:
            raise self.error
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.server.stop)
            self._thread.join(30)
            assert not self._thread.is_alive(), "the env server did not stop"
        if self.error is not None:
            raise self.error


async def open_env(flavour: str, address: str, *, vector: bool = False, **kwargs: Any) -> Flavoured:
    """Connect with the async core or the sync shell; the caller closes it."""
    if flavour == "async":
        cls = AsyncRemoteVectorEnv if vector else AsyncRemoteEnv
        return Flavoured(flavour, await cls(address, **kwargs).connect())
    sync_cls = RemoteVectorEnv if vector else RemoteEnv
    return Flavoured(flavour, sync_cls(address, **kwargs))


async def open_when_free(flavour: str, address: str, *, timeout: float = 10.0, **kwargs: Any) -> Flavoured:
    """Connect, retrying while the server has not yet noticed a dropped client.

    A server learns that a client vanished from its event loop, asynchronously:
    a new client may arrive in the same loop iteration and be told "busy".
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await open_env(flavour, address, **kwargs)
        except ServerBusyError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


class Flavoured:
    """Calls an async core (awaited) or a sync shell through one awaitable interface."""

    def __init__(self, flavour: str, env: Any) -> None:
        self.flavour = flavour
        self.env = env

    async def _call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        result = func(*args, **kwargs)
        if self.flavour == "async":
            result = await result
        return result

    async def reset(self, **kwargs: Any) -> Any:
        return await self._call(self.env.reset, **kwargs)

    async def step(self, action: Any) -> Any:
        return await self._call(self.env.step, action)

    async def render(self) -> Any:
        return await self._call(self.env.render)

    async def close(self) -> None:
        await self._call(self.env.close)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


def _same_float(a: float, b: float) -> bool:
    if math.isnan(a) and math.isnan(b):
        return True
    return struct.pack("<d", a) == struct.pack("<d", b)


def assert_same(a: Any, b: Any, path: str = "value") -> None:
    """Assert ``a`` and ``b`` are identical: types, dtypes, shapes, bytes (NaN equals NaN).

    Bitwise comparison also tells ``0.0`` from ``-0.0``.
    """
    assert type(a) is type(b), f"{path}: type {type(a).__name__} != {type(b).__name__} ({a!r} vs {b!r})"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype, f"{path}: dtype {a.dtype} != {b.dtype}"
        assert a.shape == b.shape, f"{path}: shape {a.shape} != {b.shape}"
        if a.dtype.hasobject:
            for i, (x, y) in enumerate(zip(a.reshape(-1), b.reshape(-1), strict=True)):
                assert_same(x, y, f"{path}.flat[{i}]")
        else:
            assert a.tobytes() == b.tobytes() or _nan_equal(a, b), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype, f"{path}: dtype {a.dtype} != {b.dtype}"
        assert_same(np.asarray(a), np.asarray(b), path)
    elif isinstance(a, float):
        assert _same_float(a, b), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _nan_equal(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    # NaNs may differ in payload bits; everything else must match bit for bit.
    if a.dtype.kind not in "fc":
        return False
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if not np.array_equal(nan_a, nan_b):
        return False
    return bool(a[~nan_a].tobytes() == b[~nan_b].tobytes())
