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
from rlmesh.server import EnvServer

__all__ = ["FLAVOURS", "FakeServer", "Flavoured", "ServerThread", "assert_same", "assert_same_episodes",
           "cartpole_hello", "open_env"]

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


def assert_same_steps(env: Any, ref: Any, steps: int, action_seed: int) -> int:
    """Step ``env`` and the in-process ``ref`` with the same seeded actions (sampled from ``ref``'s
    action space), asserting each result the same; returns how many lanes ended meanwhile."""
    space = ref.action_space
    space.seed(action_seed)
    ends = 0
    for _ in range(steps):
        a = space.sample()
        got, want = env.step(a), ref.step(a)
        assert_same(got, want)
        ends += int(np.sum(np.asarray(want[2]) | np.asarray(want[3])))
    return ends


def assert_same_episodes(env: Any, ref: Any, steps: int, seed: int) -> None:
    """Reset ``env`` and the in-process single env ``ref`` with ``seed``, then step both with the
    same seeded actions, asserting each result the same; an ended episode is reset on both."""
    assert_same(env.reset(seed=seed), ref.reset(seed=seed))
    ref.action_space.seed(seed)
    for _ in range(steps):
        a = ref.action_space.sample()
        got, want = env.step(a), ref.step(a)
        assert_same(got, want)
        if want[2] or want[3]:
            assert_same(env.reset(), ref.reset())


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


class FakeServer:
    """A hostile server written for a test, on a Unix socket, in a thread.

    It accepts one client, answers its HELLO with ``hello(request_id)`` (by default a real
    handshake for CartPole), then answers every later request frame with ``reply(frame)``:
    bytes to send, a list of ``(bytes, delay_s)`` chunks to drip, or None for no answer.
    """

    def __init__(self, path: str, reply: Callable[[Any], Any], hello: Callable[[int], bytes] | None = None) -> None:
        import socket

        self.path = path
        self.address = f"unix://{path}"
        self._reply = reply
        self._hello = hello or cartpole_hello
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(4)
        self._listener.settimeout(30)
        self.requests: list[Any] = []
        self._thread = threading.Thread(target=self._run, name="fake-server", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from rlmesh.errors import ProtocolError
        from rlmesh.protocol import Connection, MessageType

        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        with sock:
            conn = Connection()
            while True:
                try:
                    data = sock.recv(1 << 16)
                    frames = conn.receive_data(data) if data else None
                except (OSError, ProtocolError):
                    return
                if frames is None:
                    return
                for frame in frames:
                    self.requests.append(frame)
                    if frame.type is MessageType.HELLO:
                        out: Any = self._hello(frame.request_id)
                    elif frame.type is MessageType.CLOSE:
                        return
                    else:
                        out = self._reply(frame)
                    try:
                        if isinstance(out, (bytes, bytearray)):
                            sock.sendall(out)
                        elif out is not None:
                            for chunk, delay in out:
                                sock.sendall(chunk)
                                time.sleep(delay)
                    except OSError:
                        return

    def close(self) -> None:
        self._listener.close()
        self._thread.join(10)


def cartpole_hello(request_id: int, **overrides: Any) -> bytes:
    """A genuine server handshake for CartPole-v1, with fields replaced by ``overrides``."""
    import dataclasses

    import gymnasium as gym

    from rlmesh.protocol import ServerHello, SpecData

    env = gym.make("CartPole-v1")
    assert env.spec is not None
    hello = ServerHello(False, None, env.observation_space, env.action_space, None, None, dict(env.metadata),
                        None, SpecData.from_spec(env.spec), None)
    return ServerHello.frame(dataclasses.replace(hello, **overrides).encode_parts(), request_id, None)
