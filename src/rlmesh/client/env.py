"""The asyncio core over one connection: what every remote env does, and AsyncRemoteEnv.

:class:`~rlmesh.client.remote_shard.RemoteShard` (a vector env's lanes on one server) is built
on the same base; :class:`~rlmesh.client.vector.AsyncRemoteVectorEnv` is a vector env over
one or more of them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec
from gymnasium.utils import seeding

from ..errors import EnvClosedError, InvalidArgumentError, TransportError, UnsupportedSpaceError
from ..protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    CallRequest,
    Frame,
    MessageType,
    ResetRequest,
    ServerHello,
    SpecData,
    decode_reset_reply,
    decode_step_reply,
)
from ..protocol import auth as _auth
from ..protocol.bounds import DEFAULT_MAX_INFO_SIZE, DEFAULT_MAX_VARIABLE_SIZE, ReplyBound, reply_bound
from ..protocol.data_plane import DEFAULT_MAX_REGION_SIZE
from ..protocol.messages import RENDER_MODE, check_attribute_name
from ..protocol.spaces import opaque_spaces
from .actions import check_action
from .connection import ClientConnection
from .options import ClientOptions
from .pipeline import Plan, send
from .tls import TlsOption, make_client_tls

__all__ = ["AsyncRemoteEnv"]

log = logging.getLogger("rlmesh")
_SAFE_ID = re.compile(r"^(?:[\w.-]+/)?[\w.:-]+$")


class _AsyncRemoteBase:
    """Connection handling, handshake and the requests shared by both env kinds."""

    _vector: bool = False
    _entry_point = "rlmesh:RemoteEnv"
    _vector_entry_point: str | None = None

    observation_space: spaces.Space[Any]
    action_space: spaces.Space[Any]
    metadata: dict[str, Any]
    render_mode: str | None
    spec: EnvSpec | None
    remote_spec: SpecData | None
    num_envs: int | None = None

    def __init__(
        self,
        address: str | None = None,
        *,
        connect_timeout: float | None = 10.0,
        request_timeout: float | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        token: str | bytes | None = None,
        tls: TlsOption = None,
        strict_actions: bool = False,
        max_info_size: int = DEFAULT_MAX_INFO_SIZE,
        max_variable_size: int = DEFAULT_MAX_VARIABLE_SIZE,
        data_plane: str = "auto",
        max_region_size: int = DEFAULT_MAX_REGION_SIZE,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and not (isinstance(render_mode, str) and RENDER_MODE.fullmatch(render_mode)):
            raise InvalidArgumentError(f"render_mode must be a render mode's name, such as 'rgb_array', got {render_mode!r}")
        self._requested_render_mode = render_mode
        options = ClientOptions(
            connect_timeout=connect_timeout, request_timeout=request_timeout, max_frame_size=max_frame_size,
            token=token, tls=tls, strict_actions=strict_actions, max_info_size=max_info_size,
            max_variable_size=max_variable_size, data_plane=data_plane, max_region_size=max_region_size,
        )
        options.check_address(address)
        self.client_options = options
        self.address = address
        self.connect_timeout = options.connect_timeout
        self.request_timeout = options.request_timeout
        self.max_frame_size = options.max_frame_size
        self.strict_actions = options.strict_actions
        self.max_info_size = options.max_info_size
        self.max_variable_size = options.max_variable_size
        self.data_plane = options.data_plane
        self.max_region_size = options.max_region_size
        self._require_auth = token is not None
        self._token = _auth.load_token(token)
        self._tls = make_client_tls(tls)
        self._conn: ClientConnection | None = None
        self._closed = False
        self._np_random: np.random.Generator | None = None
        self._np_random_seed: int | None = None
        self.remote_spec = None
        self.spec = None

    # -- lifecycle ---------------------------------------------------------
    async def connect(self) -> Any:
        """Connect to the server and handshake; returns ``self``.

        Raises:
            ConnectError: Nothing accepts connections at the address.
            ServerBusyError: The server already serves a client.
            AuthenticationError: A wrong or missing token.
            RLMeshTimeoutError: ``connect_timeout`` passed.
        """
        if self._closed:
            raise EnvClosedError("this env was closed; create a new one")
        if self._conn is not None:
            return self
        if self.address is None:
            raise InvalidArgumentError("no address to connect to")
        conn = await ClientConnection.open(
            self.address, connect_timeout=self.connect_timeout, max_frame_size=self.max_frame_size,
            token=self._token, require_auth=self._require_auth, tls=self._tls, data_plane=self.data_plane,
            max_region_size=self.max_region_size, render_mode=self._requested_render_mode,
        )
        self._adopt(conn)
        return self

    async def start(self) -> Any:
        """The same as :meth:`connect` (a sandbox starts its container first); returns ``self``."""
        return await self.connect()

    def _adopt(self, conn: ClientConnection) -> None:
        """Take a handshaken connection (aborted if its handshake does not fit this class)."""
        try:
            if self._closed:  # close() ran while the handshake was in flight
                raise EnvClosedError("this env was closed while it connected")
            assert conn.hello is not None
            self._apply_hello(conn.hello)
            conn.bound_replies(self._reply_bound(conn.hello))
        except BaseException:
            conn.abort()
            raise
        self._conn = conn
        log.info("%s: data plane: %s", self.address or type(self).__name__, conn.data_plane)

    def _apply_hello(self, hello: ServerHello) -> None:
        if hello.vector != self._vector:
            kind = f"a vector env with {hello.num_envs} lanes" if hello.vector else "a single env"
            use = "AsyncRemoteVectorEnv / RemoteVectorEnv" if hello.vector else "AsyncRemoteEnv / RemoteEnv"
            raise InvalidArgumentError(f"the server at {self.address} serves {kind}; connect with {use}")
        self.observation_space = hello.observation_space
        self.action_space = hello.action_space
        self.metadata = dict(hello.metadata)
        self.render_mode = hello.render_mode
        self.remote_spec = hello.spec
        self.spec = self._host_spec(hello.spec)
        self._bind_opaque_spaces(hello)

    def _reply_bound(self, hello: ServerHello) -> ReplyBound:
        """The largest STEP or RESET reply the handshake's spaces allow (see :mod:`rlmesh.protocol.bounds`)."""
        return reply_bound(
            hello.observation_space, num_envs=hello.num_envs, single_observation_space=hello.single_observation_space,
            autoreset_mode=hello.autoreset_mode or ("NextStep" if hello.vector else None),
            max_info_size=self.max_info_size, max_variable_size=self.max_variable_size,
        )

    def _bind_opaque_spaces(self, hello: ServerHello) -> None:
        # Custom spaces arrive as OpaqueSpaces, whose sample/contains/seed the server answers.
        for name in ("observation_space", "action_space", "single_observation_space", "single_action_space"):
            space = getattr(hello, name)
            if space is not None:
                for opaque in opaque_spaces(space):
                    opaque.ask = functools.partial(self._ask_space, name)

    def _ask_space(self, name: str, path: tuple[Any, ...], method: str, *args: Any) -> Any:
        # Called by OpaqueSpace's sync methods; blocking is fine on any thread but the loop's.
        conn = self.connection
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is conn.loop:
            raise UnsupportedSpaceError(
                f"{name} holds a custom space whose {method}() the server answers; from async code use "
                f"`await env.space_call({name!r}, {list(path)!r}, {method!r}, ...)`"
            )
        future = asyncio.run_coroutine_threadsafe(self.space_call(name, list(path), method, *args), conn.loop)
        return future.result()

    async def space_call(self, space: str, path: list[Any], method: str, *args: Any) -> Any:
        """Ask the server to ``sample``, ``contains`` or ``seed`` one of its (custom) spaces.

        Args:
            space: ``observation_space``, ``action_space`` or their ``single_`` forms.
            path: Keys and indices down to the sub-space (an OpaqueSpace's ``path``).
            method: ``sample``, ``contains`` or ``seed``.
            *args: The method's argument (the value for ``contains``, the seed for ``seed``).
        """
        return await self._call("space", space, (path, method, *args))

    def _spec_kwargs(self) -> dict[str, Any]:
        """The constructor arguments that make an equivalent env (for ``gym.make(env.spec)``)."""
        kwargs = {"address": self.address, **self.client_options.spec_kwargs()}
        if self._requested_render_mode is not None:
            kwargs["render_mode"] = self._requested_render_mode
        return kwargs

    def _host_spec(self, remote: SpecData | None) -> EnvSpec:
        # Built here, from the host's own classes: nothing the server named is ever imported.
        env_id = remote.id if remote is not None and _SAFE_ID.match(remote.id) else "rlmesh/Remote-v0"
        try:
            return EnvSpec(
                id=env_id,
                entry_point=self._entry_point,
                vector_entry_point=self._vector_entry_point,
                reward_threshold=remote.reward_threshold if remote else None,
                nondeterministic=remote.nondeterministic if remote else False,
                max_episode_steps=None if self._vector or remote is None else remote.max_episode_steps,
                order_enforce=remote.order_enforce if remote else True,
                disable_env_checker=remote.disable_env_checker if remote else False,
                kwargs=self._spec_kwargs(),
            )
        except Exception:  # an id gymnasium cannot parse
            return EnvSpec(id="rlmesh/Remote-v0", entry_point=self._entry_point,
                           vector_entry_point=self._vector_entry_point, kwargs=self._spec_kwargs())

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def connection(self) -> ClientConnection:
        """The open connection.

        Raises:
            EnvClosedError: The env is closed or not connected yet.
        """
        conn = self._conn
        if conn is None:
            if self._closed:
                raise EnvClosedError("this env is closed")
            raise EnvClosedError("not connected: use `async with ...`, or `await env.connect()` "
                                 "(`await env.start()` for sandboxes) first")
        return conn

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
    async def request(self, mtype: MessageType, body: Any) -> Frame:
        """Send a request and return the raw reply frame (lost connections explained).

        Raises:
            TransportError: The connection failed (a sandbox says why its container exited).
        """
        conn = self.connection
        try:
            return await conn.request(mtype, body, self.request_timeout)
        except TransportError as exc:
            explained = await self.explain(exc)
            if explained is exc:
                raise
            raise explained from exc

    def release_region(self, request_id: int) -> None:
        """Free the shared region that a reply decoded with ``views=True`` still holds (a no-op
        once the connection is gone)."""
        conn = self._conn
        if conn is not None:
            conn.release_region(request_id)

    async def explain(self, exc: TransportError) -> Exception:
        """Turn a lost connection into a more telling error (sandboxes add the exit code)."""
        return exc

    def step_body(self, action: Any) -> Any:
        """The STEP request body for ``action`` (checked first with ``strict_actions``)."""
        if self.strict_actions:
            check_action(self.action_space, action)
        return action

    def decode_step(self, frame: Frame, *, views: bool = False) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """The checked result of a STEP reply.

        Args:
            views: Arrays from the shared region are views, not copies: the region stays held
                until ``connection.release_region(frame.request_id)``, which the caller calls
                once it has copied them (a sharded step copies them into its batch).
        """
        return self.connection.unwrap(frame, MessageType.STEP, self._fill_step_views if views else self._fill_step,
                                      keep_region=views)

    def _fill_step(self, frame: Frame, copy: bool = True) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        region = self.connection.region
        if frame.type is MessageType.STEP_SHARED and region is not None:
            return decode_step_reply(frame, self.num_envs, region.fill_step if copy else region.view_step)
        return decode_step_reply(frame, self.num_envs)

    def _fill_step_views(self, frame: Frame) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        return self._fill_step(frame, copy=False)

    def reset_body(self, seed: Any, options: dict[str, Any] | None) -> ResetRequest:
        """The RESET request for ``seed`` and ``options`` (and the client-side ``np_random``)."""
        if isinstance(seed, int) and not isinstance(seed, bool):
            self._np_random, self._np_random_seed = seeding.np_random(seed)
        return ResetRequest(seed, options)

    def decode_reset(self, frame: Frame) -> tuple[Any, dict[str, Any]]:
        """The checked result of a RESET reply (arrays copied out of the region)."""
        return self.connection.unwrap(frame, MessageType.RESET, self._fill_reset)

    def _fill_reset(self, frame: Frame) -> tuple[Any, dict[str, Any]]:
        region = self.connection.region
        if frame.type is MessageType.RESET_SHARED and region is not None:
            return decode_reset_reply(frame, region.fill_reset)
        return decode_reset_reply(frame)

    def decode_value(self, frame: Frame, mtype: MessageType) -> Any:
        """The value of a RENDER or CALL reply."""
        return self.connection.unwrap(frame, mtype, Frame.value)

    # -- the hot calls: plan, then send (rlmesh.client.pipeline) --------------
    def plan_reset(self, seed: Any, options: dict[str, Any] | None) -> Plan[tuple[Any, dict[str, Any]]]:
        """A reset, planned."""
        return Plan(((self, MessageType.RESET, self.reset_body(seed, options)),), self._finish_reset)

    def _finish_reset(self, frames: list[Frame]) -> tuple[Any, dict[str, Any]]:
        return self.decode_reset(frames[0])

    def plan_step(self, action: Any) -> Plan[tuple[Any, Any, Any, Any, dict[str, Any]]]:
        """A step, planned."""
        return Plan(((self, MessageType.STEP, self.step_body(action)),), self._finish_step)

    def _finish_step(self, frames: list[Frame]) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        return self.decode_step(frames[0])

    def plan_render(self) -> Plan[Any]:
        """A render, planned."""
        return Plan(((self, MessageType.RENDER, None),), self._finish_render)

    def _finish_render(self, frames: list[Frame]) -> Any:
        return self.decode_value(frames[0], MessageType.RENDER)

    async def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Reset the env, as ``gymnasium.Env.reset``."""
        return await send(self.plan_reset(seed, options))

    async def step(self, action: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step the env, as ``gymnasium.Env.step``."""
        return await send(self.plan_step(action))

    async def render(self) -> Any:
        """Render the env, as ``gymnasium.Env.render`` (rgb arrays come back as arrays)."""
        return await send(self.plan_render())

    @staticmethod
    def call_body(op: str, name: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> CallRequest:
        """A CALL request (the name is checked here, before anything is sent)."""
        check_attribute_name(name)
        return CallRequest(op, name, args, kwargs or {})

    async def _call(self, op: str, name: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        body = self.call_body(op, name, args, kwargs)
        return self.decode_value(await self.request(MessageType.CALL, body), MessageType.CALL)

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
        spec = getattr(self, "spec", None)  # None before the handshake
        spec_id = spec.id if spec is not None else "?"
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
        max_frame_size: The largest reply frame accepted (bytes, at least 64 KiB).
        token: The server's token (default ``RLMESH_TOKEN``); given explicitly, the server
            must also prove it knows it.
        tls: Encrypt TCP: True (system CAs), a CA file path, or an ``ssl.SSLContext``.
        strict_actions: Check each action against the action space on the host before sending
            it (``InvalidActionError``); by default the env judges its actions, as in process.
        max_info_size: Bytes a STEP or RESET reply may spend on its info dict (16 MiB). With the
            observations the spaces allow, it bounds each such reply: a bigger one is refused on its
            header (``ProtocolError``), before it is read.
        max_variable_size: Bytes a reply may spend on Sequence, Graph and custom-space leaves
            together (16 MiB), whose size the spaces do not bound.
        data_plane: ``"auto"`` (default): over a Unix socket to a server that offers it, the
            fixed-shape arrays of each step (observations, a vector env's rewards and flags) come
            through shared memory the host owns (``docs/protocol.md``); elsewhere, and with
            ``"socket"``, everything crosses the socket. The path chosen is logged (INFO).
        max_region_size: The largest shared region the host creates for the connection (64 MiB):
            the host pays for it, so a layout larger than this uses the socket.
        render_mode: The render mode to ask of the server's env. A server that makes each
            client's env from its source (``rlmesh serve SOURCE``) makes this one with it; a server
            of one env object serves only the env's own. None (default): the server's own.
            ``env.spec.make(render_mode=...)`` (``check_env``'s render check) takes this path.
    """

    async def get_wrapper_attr(self, name: str) -> Any:
        """The remote env's attribute ``name`` (searched through its wrappers).

        Raises:
            RemoteEnvError: It has no such attribute (also an ``AttributeError``), or its value
                cannot cross the wire (a ``TypeError``).
        """
        return await self._call("get_attr", name)

    async def set_wrapper_attr(self, name: str, value: Any) -> None:
        """Set the remote env's attribute ``name`` (on the wrapper that has it)."""
        await self._call("set_attr", name, (value,))

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the remote env's method ``name`` (or read the attribute, if not callable)."""
        return await self._call("call", name, args, kwargs)
