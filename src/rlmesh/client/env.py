"""The asyncio core: AsyncRemoteEnv and AsyncRemoteVectorEnv."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode

from ..errors import EnvClosedError, InvalidArgumentError, ProtocolError, TransportError
from ..protocol import DEFAULT_MAX_FRAME_SIZE, MessageType, decode_space
from ..protocol.messages import rebuild_spec
from .connection import ClientConnection

__all__ = ["AsyncRemoteEnv", "AsyncRemoteVectorEnv"]


class _AsyncRemoteBase:
    """Connection handling, handshake and the requests shared by both env kinds."""

    _vector: bool = False

    observation_space: spaces.Space[Any]
    action_space: spaces.Space[Any]
    metadata: dict[str, Any]
    render_mode: str | None
    spec: EnvSpec | None

    def __init__(
        self,
        address: str | None = None,
        *,
        connect_timeout: float | None = 10.0,
        request_timeout: float | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        for name, value in (("connect_timeout", connect_timeout), ("request_timeout", request_timeout)):
            if value is not None and not value > 0:
                raise InvalidArgumentError(f"{name} must be a positive number of seconds or None, got {value!r}")
        self.address = address
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self._max_frame_size = max_frame_size
        self._conn: ClientConnection | None = None
        self._closed = False
        self._np_random: np.random.Generator | None = None
        self._np_random_seed: int | None = None

    # -- lifecycle ---------------------------------------------------------
    async def connect(self) -> Any:
        """Connect to the server and handshake; returns ``self``.

        Raises:
            ConnectError: Nothing accepts connections at the address.
            ServerBusyError: The server already serves a client.
            RLMeshTimeoutError: ``connect_timeout`` passed.
        """
        if self._closed:
            raise EnvClosedError("this env was closed; create a new one")
        if self._conn is not None:
            return self
        if self.address is None:
            raise InvalidArgumentError("no address to connect to")
        conn = await ClientConnection.open(
            self.address, connect_timeout=self.connect_timeout, max_frame_size=self._max_frame_size
        )
        try:
            if self._closed:  # close() ran while the handshake was in flight
                raise EnvClosedError("this env was closed while it connected")
            self._apply_hello(conn.hello)
        except BaseException:
            conn.abort()
            raise
        self._conn = conn
        return self

    def _apply_hello(self, hello: dict[str, Any]) -> None:
        if bool(hello.get("vector")) != self._vector:
            kind = f"a vector env with {hello.get('num_envs')} lanes" if hello.get("vector") else "a single env"
            use = "AsyncRemoteVectorEnv / RemoteVectorEnv" if hello.get("vector") else "AsyncRemoteEnv / RemoteEnv"
            raise InvalidArgumentError(f"the server at {self.address} serves {kind}; connect with {use}")
        try:
            self.observation_space = decode_space(hello["observation_space"], [])
            self.action_space = decode_space(hello["action_space"], [])
            self.metadata = dict(hello["metadata"])
            self.render_mode = hello["render_mode"]
            self.spec = rebuild_spec(hello["spec"])
        except Exception as exc:
            raise ProtocolError(f"malformed handshake: {exc!r}") from exc

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    async def close(self) -> None:
        """Close the connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()

    async def __aenter__(self) -> Any:
        try:
            return await self.connect()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- requests ----------------------------------------------------------
    async def _request(self, mtype: MessageType, body: Any) -> Any:
        conn = self._conn
        if conn is None:
            if self._closed:
                raise EnvClosedError("this env is closed")
            raise EnvClosedError("not connected: use `async with ...` or `await env.connect()` first")
        try:
            return await conn.request(mtype, body, self.request_timeout)
        except TransportError as exc:
            explained = await self._explain(exc)
            if explained is exc:
                raise
            raise explained from exc

    def _request_from_thread(self, mtype: MessageType, body: Any) -> Any:
        # The sync classes' hot path (see ClientConnection.request_from_thread).
        conn = self._conn
        if conn is None:
            raise EnvClosedError("this env is closed" if self._closed else "not connected")
        try:
            return conn.request_from_thread(mtype, body, self.request_timeout)
        except TransportError as exc:
            if type(self)._explain is _AsyncRemoteBase._explain:
                raise
            explained = asyncio.run_coroutine_threadsafe(self._explain(exc), conn.loop).result()
            if explained is exc:
                raise
            raise explained from exc

    async def _explain(self, exc: TransportError) -> Exception:
        """Turn a lost connection into a more telling error (sandboxes add the exit code)."""
        return exc

    def step_from_thread(self, action: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """:meth:`step`, blocking, from a thread other than the connection's loop."""
        obs, reward, terminated, truncated, info = self._request_from_thread(MessageType.STEP, action)
        return obs, reward, terminated, truncated, info

    async def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Reset the env, as ``gymnasium.Env.reset``."""
        if seed is not None and isinstance(seed, int) and not isinstance(seed, bool):
            self._np_random, self._np_random_seed = seeding.np_random(seed)
        obs, info = await self._request(MessageType.RESET, {"seed": seed, "options": options})
        return obs, info

    async def step(self, action: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step the env, as ``gymnasium.Env.step``."""
        obs, reward, terminated, truncated, info = await self._request(MessageType.STEP, action)
        return obs, reward, terminated, truncated, info

    async def render(self) -> Any:
        """Render the env, as ``gymnasium.Env.render`` (rgb arrays come back as arrays)."""
        return await self._request(MessageType.RENDER, None)

    @property
    def np_random(self) -> np.random.Generator:
        """A client-side generator, seeded by ``reset(seed=...)`` like the env's own."""
        if self._np_random is None:
            self._np_random, self._np_random_seed = seeding.np_random()
        return self._np_random

    @property
    def np_random_seed(self) -> int | None:
        """The seed of :attr:`np_random`."""
        return self._np_random_seed

    def __repr__(self) -> str:
        spec_id = self.spec.id if getattr(self, "spec", None) is not None else "?"  # type: ignore[union-attr]
        return f"<{type(self).__name__} {spec_id} at {self.address}>"


class AsyncRemoteEnv(_AsyncRemoteBase):
    """An env served by ``rlmesh serve``, stepped with asyncio.

    Example::

        async with AsyncRemoteEnv("unix:///tmp/cartpole.sock") as env:
            obs, info = await env.reset(seed=0)
            obs, reward, terminated, truncated, info = await env.step(env.action_space.sample())

    Args:
        address: ``unix:///abs/path.sock``, ``tcp://host:port`` or ``host:port``.
        connect_timeout: Seconds allowed for connecting and the handshake.
        request_timeout: Seconds allowed for each reply; None waits forever.
        max_frame_size: The largest reply frame accepted.
    """


class AsyncRemoteVectorEnv(_AsyncRemoteBase):
    """A vector env served by ``rlmesh serve --num-envs N``, stepped with asyncio.

    It follows ``gymnasium.vector.VectorEnv`` exactly: an int seed means seed+i
    per lane, ``options["reset_mask"]`` resets some lanes, and the server's
    autoreset mode (``metadata["autoreset_mode"]``) decides what a step after
    an episode end returns.

    Args:
        address: ``unix:///abs/path.sock``, ``tcp://host:port`` or ``host:port``.
        connect_timeout: Seconds allowed for connecting and the handshake.
        request_timeout: Seconds allowed for each reply; None waits forever.
        max_frame_size: The largest reply frame accepted.
    """

    _vector = True
    num_envs: int
    single_observation_space: spaces.Space[Any]
    single_action_space: spaces.Space[Any]

    def _apply_hello(self, hello: dict[str, Any]) -> None:
        super()._apply_hello(hello)
        try:
            self.num_envs = int(hello["num_envs"])
            self.single_observation_space = decode_space(hello["single_observation_space"], [])
            self.single_action_space = decode_space(hello["single_action_space"], [])
            self.metadata["autoreset_mode"] = AutoresetMode(hello["autoreset_mode"] or "NextStep")
        except Exception as exc:
            raise ProtocolError(f"malformed vector handshake: {exc!r}") from exc

    @property
    def autoreset_mode(self) -> AutoresetMode:
        """The server's autoreset mode."""
        mode: AutoresetMode = self.metadata["autoreset_mode"]
        return mode
