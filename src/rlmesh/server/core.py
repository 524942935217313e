"""EnvServer: serve one Gymnasium env to one client at a time over a stream.

The server runs on asyncio with plain protocol callbacks: a request is decoded,
applied to the env and answered inside ``data_received``, with no task or
thread hop on the hot path. Env calls are synchronous, so one client at a time
is the natural model.

A connection goes through three states. Until it is *active* it holds no slot
and may send only small frames: it must say HELLO (and, when the server has a
token, prove it knows the token) within ``hello_timeout``. Only then does it
claim the one client slot; if another client holds it, the newcomer waits a
moment (the other may be hanging up) and is then told the server is busy. An
active client that sends nothing for ``idle_timeout`` is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, cast

import gymnasium as gym

from .._address import Address, parse_address
from ..errors import AuthenticationError, ConnectError, InvalidArgumentError, ProtocolError
from ..protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    MIN_FRAME_SIZE,
    READY_LINE_PREFIX,
    CallRequest,
    Connection,
    ErrorBody,
    Frame,
    MessageType,
    ResetRequest,
    ServerHello,
    SpecData,
    encode_message,
    error_for_exception,
)
from ..protocol import auth as _auth
from ..protocol.data_plane import Layout
from ..protocol.faults import env_error
from ..protocol.session import ServerHandshake, ServerHandshakeState
from ..protocol.spaces import space_at
from ..protocol.values import unencodable
from ._types import EnvLike
from .data_plane import FEATURE, RegionHandover, ServerRegion, supported
from .handoff import HandoffListener

__all__ = ["HELLO_TIMEOUT", "IDLE_TIMEOUT", "EnvServer"]

log = logging.getLogger("rlmesh.server")

HELLO_TIMEOUT = 10.0
"""Seconds a new connection has to finish its HELLO (and authentication)."""
IDLE_TIMEOUT = 300.0
"""Default seconds of silence after which a TCP client is dropped (Unix sockets: none)."""
MAX_PENDING = 64
"""Connections that may be in their handshake at once; a newer one evicts the oldest."""
MAX_EVICTED = 256
"""Evicted connections that may still be closing (told they were dropped: busy); more are reset."""
BUSY_GRACE = 0.25
"""Seconds a newly authenticated client waits for the slot before it is told the server is busy."""


class EnvServer:
    """Serve a Gymnasium env (or vector env) to remote clients.

    Args:
        env_or_factory: The env, or a zero-argument callable that creates it
            (called once, when serving starts).
        address: ``unix:///abs/path.sock``, ``tcp://host:port`` or ``host:port``.
        max_frame_size: The largest frame accepted from an active client (a client
            still in its handshake may send at most 64 KiB).
        ready_message: Printed (with the address) once connections are accepted;
            None prints nothing.
        hello_timeout: Seconds a new connection has to finish its handshake.
        token: The shared token clients must prove they know. Over TCP it defaults to
            ``RLMESH_TOKEN``, and serving TCP without one needs ``insecure=True``.
        insecure: Serve TCP without a token; allowed on loopback addresses only.
        tls: An ``ssl.SSLContext`` (server side) to encrypt TCP connections.
        idle_timeout: Seconds of silence after which an active client is dropped;
            default 300 over TCP, none on Unix sockets. None disables it.
        lease: Stop when no client has been served for this many seconds (from the start, or
            since the last client left); None serves forever. Dialling, the seconds allowed to
            reach the client.
        dial: Connect to ``address`` (a Unix socket the client listens on) instead of
            listening there; serve that one connection and stop when it ends. Sandboxes use
            this, so that the container needs no writable host directory and ends with its owner.
        handoff: Also adopt connections handed over as file descriptors on the Unix socket at
            this path (:mod:`rlmesh.server.handoff`): a relay passes its accepted TCP clients
            on, and is then out of the data path. Needs a token, as TCP does.

    Raises:
        InvalidArgumentError: TCP without a token (and not ``insecure`` on loopback), or a
            bad option.
    """

    def __init__(
        self,
        env_or_factory: EnvLike | Callable[[], EnvLike],
        address: str,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        ready_message: str | None = READY_LINE_PREFIX,
        hello_timeout: float = HELLO_TIMEOUT,
        token: str | bytes | None = None,
        insecure: bool = False,
        tls: ssl.SSLContext | None = None,
        idle_timeout: float | None | str = "default",
        lease: float | None = None,
        dial: bool = False,
        handoff: str | None = None,
    ) -> None:
        self._address: Address = parse_address(address)
        tcp = self._address.path is None
        if isinstance(max_frame_size, bool) or not isinstance(max_frame_size, int) or max_frame_size < MIN_FRAME_SIZE:
            raise InvalidArgumentError(f"max_frame_size must be an int of at least {MIN_FRAME_SIZE}, got {max_frame_size!r}")
        if handoff is not None and (dial or not isinstance(handoff, str) or not os.path.isabs(handoff)):
            raise InvalidArgumentError(f"handoff must be an absolute socket path (and not with dial), got {handoff!r}")
        self._token = _auth.load_token(token, env=tcp or handoff is not None)
        if handoff is not None and self._token is None:
            raise InvalidArgumentError(
                "handoff serves the TCP clients a relay passes on: it needs a token (RLMESH_TOKEN, "
                "--token-file or --require-token), which the clients prove they know"
            )
        if tcp and self._token is None:
            if not insecure:
                raise InvalidArgumentError(
                    f"serving {self._address} over TCP needs a token: set RLMESH_TOKEN or pass --token-file PATH "
                    "(clients pass the same token), or --insecure on a loopback address"
                )
            if not _is_loopback(self._address.host or ""):
                raise InvalidArgumentError(
                    f"--insecure is allowed on loopback addresses only, not {self._address.host}: anyone who can "
                    "reach this port could step the env. Set a token (RLMESH_TOKEN or --token-file)"
                )
        if tls is not None and not tcp:
            raise InvalidArgumentError("TLS applies to TCP addresses; a Unix socket is protected by its permissions")
        if idle_timeout == "default":
            idle_timeout = IDLE_TIMEOUT if tcp else None
        if idle_timeout is not None and (isinstance(idle_timeout, (bool, str)) or not idle_timeout > 0):
            raise InvalidArgumentError(f"idle_timeout must be a positive number of seconds or None, got {idle_timeout!r}")
        if lease is not None and (isinstance(lease, bool) or not isinstance(lease, (int, float)) or not lease > 0):
            raise InvalidArgumentError(f"lease must be a positive number of seconds or None, got {lease!r}")
        if dial and tcp:
            raise InvalidArgumentError("dial applies to Unix socket addresses")
        self._handoff = handoff
        self._lease: float | None = lease
        self._dial = dial
        self._startup_error: Exception | None = None
        self._vacant_since = 0.0
        self._env_or_factory = env_or_factory
        self._env: EnvLike | None = None
        self._max_frame_size = max_frame_size
        self._ready_message = ready_message
        self._hello_timeout = hello_timeout
        self._idle_timeout: float | None = idle_timeout
        self._tls = tls
        self._active: _ServerProtocol | None = None
        self._waiting: list[_ServerProtocol] = []
        self._pending: dict[_ServerProtocol, None] = {}  # in their handshake, oldest first
        self._evicted: set[_ServerProtocol] = set()  # evicted from _pending, told why, closing
        self._hello: tuple[dict[str, Any], list[Any]] | None = None
        self._layout: Layout | None = None  # the data plane's, from the env's spaces
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_lock = threading.Lock()  # stop() from other threads vs serve_async starting/ending
        self._stop_requested = False
        self._adopting: dict[asyncio.Future[Any], socket.socket] = {}
        self.is_vector = False
        #: Set while the server accepts connections (for a server run in a thread).
        self.ready = threading.Event()

    @property
    def address(self) -> str:
        """The address served, as a string."""
        return str(self._address)

    @property
    def env(self) -> EnvLike:
        """The served env (created on first use when a factory was given)."""
        if self._env is None:
            made = self._env_or_factory
            if not isinstance(made, (gym.Env, gym.vector.VectorEnv)) and callable(made):
                made = made()
            if not isinstance(made, (gym.Env, gym.vector.VectorEnv)):
                raise TypeError(f"env factory returned {type(made).__name__}, not a gymnasium env")
            self._env = made
            self.is_vector = isinstance(made, gym.vector.VectorEnv)
        return self._env

    def serve(self) -> None:
        """Serve until SIGTERM or SIGINT, then close the env and remove the socket."""
        try:
            import uvloop  # noqa: PLC0415  (optional speed-up)
        except ImportError:
            uvloop = None  # type: ignore[assignment]
        # Outside the except block, so that env tracebacks do not carry the ImportError.
        if uvloop is None:
            asyncio.run(self.serve_async())
        else:
            uvloop.run(self.serve_async())

    def stop(self) -> None:
        """Ask :meth:`serve` or :meth:`serve_async` to return; callable from any thread. Called
        before the server has started (a thread still starting it), it returns once started."""
        with self._stop_lock:
            stop, loop = self._stop, self._loop
            if stop is None or loop is None:
                self._stop_requested = True
                return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            stop.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(stop.set)

    async def serve_async(self, *, install_signal_handlers: bool = True) -> None:
        """Serve until :meth:`stop`, SIGTERM or SIGINT (or, dialling, until the connection ends).

        Args:
            install_signal_handlers: Stop on SIGTERM/SIGINT (main thread only).

        Raises:
            ConnectError: Dialling, the address did not exist within ``lease``, or refused the
                connection (nobody listens there any more: its owner is gone).
        """
        loop = asyncio.get_running_loop()
        with self._stop_lock:
            self._stop = asyncio.Event()
            self._loop = loop
            if self._stop_requested:  # stop() came first
                self._stop_requested = False
                self._stop.set()
        try:
            await self._serve(loop, install_signal_handlers)
        finally:
            with self._stop_lock:
                self._stop = self._loop = None

    async def _serve(self, loop: asyncio.AbstractEventLoop, install_signal_handlers: bool) -> None:
        assert self._stop is not None
        addr = self._address
        server: asyncio.AbstractServer | None = None
        if self._dial:
            # Dial first, then make the env: if making it fails, the client hears why (an ERROR
            # answering its HELLO, with the exception's type) instead of reading a log.
            await self._dial_once(loop)
            try:
                env = self.env
            except Exception as exc:
                self._startup_error = exc
                for early in list(self._pending):
                    early.env_ready()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._hello_timeout):
                        await self._stop.wait()  # until the client has heard it (or is gone)
                raise
        else:
            env = self.env
        vector = isinstance(env, gym.vector.VectorEnv)
        try:
            self._layout = Layout(env.observation_space, int(env.num_envs) if vector else None)  # type: ignore[union-attr]
        except ValueError as exc:  # too many arrays to place: served over the socket, as before
            log.info("no shared memory for this env: %s", exc)
            self._layout = None
        data_plane = self._layout is not None and bool(self._layout.size) and supported()
        self._hello = _describe(env, data_plane=data_plane).encode_parts()
        if self._dial:
            for early in list(self._pending):  # connected above; a HELLO may be waiting
                early.env_ready()
        elif addr.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(addr.path)
            server = await loop.create_unix_server(lambda: _ServerProtocol(self), addr.path)
        else:
            assert addr.host is not None and addr.port is not None
            server = await loop.create_server(lambda: _ServerProtocol(self), addr.host, addr.port, ssl=self._tls)
            if addr.port == 0:
                port = server.sockets[0].getsockname()[1]
                self._address = Address(host=addr.host, port=port)
        handoff = None
        if self._handoff is not None:
            handoff = HandoffListener(self._handoff, self._adopt)
        handled: list[signal.Signals] = []
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, self._stop.set)
                    handled.append(sig)
        lease_timer = None
        if self._lease is not None and not self._dial:
            self._vacant_since = loop.time()
            lease_timer = loop.call_later(self._lease, self._check_lease)
        try:
            if self._ready_message is not None and server is not None:
                print(f"{self._ready_message} on {self.address}", flush=True)
            self.ready.set()
            auth = "token" if self._token else "none"
            log.info("serving %s %s %s (authentication: %s%s)", _env_name(env), "to" if self._dial else "on",
                     self.address, auth, ", TLS" if self._tls else "")
            await self._stop.wait()
        finally:
            self.ready.clear()
            if lease_timer is not None:
                lease_timer.cancel()
            for sig in handled:
                loop.remove_signal_handler(sig)
            if server is not None:
                server.close()
            if handoff is not None:
                handoff.close()
            for task, sock in list(self._adopting.items()):  # handed over, not yet served: closed
                task.cancel()
                sock.close()
            for proto in [self._active, *self._waiting, *self._pending, *self._evicted]:
                if proto is not None and proto.transport is not None:
                    proto.transport.abort()
            if server is not None:
                await server.wait_closed()
            try:
                env.close()
            finally:
                if addr.path is not None and server is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(addr.path)
                log.info("server %s %s stopped", "to" if self._dial else "on", self.address)

    async def _dial_once(self, loop: asyncio.AbstractEventLoop) -> None:
        # The client listens and the server connects: a sandbox reaches its owner through one
        # socket file mounted read-only, and exits when that one connection ends.
        path = self._address.path
        assert path is not None
        deadline = loop.time() + (self._lease or 60.0)
        while True:
            try:
                await loop.create_unix_connection(lambda: _ServerProtocol(self), path)
                return
            except ConnectionRefusedError as exc:
                # The socket exists but nobody listens on it: its owner closed it or died (a
                # sandbox's owner listens before it creates the container), so waiting is
                # pointless. Exiting now lets the engine remove the container at once.
                raise ConnectError(f"no client listens at {self.address} any more (its owner is gone): {exc}") from exc
            except FileNotFoundError as exc:
                if loop.time() > deadline:
                    raise ConnectError(f"no client listens at {self.address}: {exc}") from exc
                await asyncio.sleep(0.01)

    def _adopt(self, sock: socket.socket) -> None:
        # A connection handed over by a relay: served as if accepted here.
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(loop.connect_accepted_socket(lambda: _ServerProtocol(self), sock))
        self._adopting[task] = sock
        task.add_done_callback(self._adopted)

    def _adopted(self, task: asyncio.Future[Any]) -> None:
        self._adopting.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not serve a handed-over connection: %r", task.exception())

    def _check_lease(self) -> None:
        # Listening with a lease: stop when no client has been served for `lease` seconds
        # (after start, or since the last one left), so an owner that vanished leaves nothing.
        assert self._lease is not None and self._stop is not None
        loop = asyncio.get_running_loop()
        if self._active is not None:
            self._vacant_since = loop.time()
        idle = loop.time() - self._vacant_since
        if idle >= self._lease:
            log.warning("no client for %.0fs (lease=%gs): stopping", idle, self._lease)
            self._stop.set()
            return
        loop.call_later(min(self._lease - idle, self._lease / 4) + 0.01, self._check_lease)

    # -- the slot ----------------------------------------------------------
    def _claim(self, proto: _ServerProtocol) -> bool:
        """Give ``proto`` the slot if it is free (or held by a peer that hung up)."""
        active = self._active
        if active is not None and active is not proto and _peer_hung_up(active):
            log.info("client %s hung up; freeing the slot", active.peer)
            active.release()
        if self._active is None:
            self._active = proto
            return True
        return False

    def _release(self, proto: _ServerProtocol) -> None:
        if self._active is proto:
            self._active = None
            self._vacant_since = asyncio.get_running_loop().time()
            if self._dial and self._stop is not None:
                self._stop.set()  # a dialled server has one client in its life
            while self._waiting and self._active is None:
                self._waiting.pop(0).promote()

    def handle(self, frame: Frame, reply_limit: int, region: ServerRegion | None = None) -> bytes:
        """Apply one request to the env and return the encoded reply (an ERROR if it failed).

        ``STEP_SHARED`` and ``RESET_SHARED`` replies leave their fixed-shape arrays in the
        connection's ``region`` (the data plane)."""
        env = self.env
        mtype = frame.type
        rid = frame.request_id
        try:
            if mtype is MessageType.STEP:
                reply = encode_message(mtype, rid, env.step(frame.value()))
            elif mtype is MessageType.RESET:
                req = ResetRequest.decode(frame)
                reply = encode_message(mtype, rid, env.reset(seed=req.seed, options=req.options))
            elif mtype is MessageType.STEP_SHARED or mtype is MessageType.RESET_SHARED:
                if region is None:
                    raise ProtocolError(f"{mtype.name} without a shared region (MAP)")
                if mtype is MessageType.STEP_SHARED:
                    result = region.step(env.step(frame.value()))
                else:
                    req = ResetRequest.decode(frame)
                    result = region.reset(env.reset(seed=req.seed, options=req.options))
                reply = encode_message(mtype, rid, result)
            elif mtype is MessageType.RENDER:
                reply = encode_message(mtype, rid, env.render())
            elif mtype is MessageType.CALL:
                reply = encode_message(mtype, rid, _call(env, CallRequest.decode(frame)))
            elif mtype is MessageType.CLOSE:
                return encode_message(mtype, rid, None)
            else:
                raise ProtocolError(f"unexpected {mtype.name} from an active client")
        except ProtocolError:
            raise
        except Exception as exc:
            log.debug("request %s failed", mtype.name, exc_info=True)
            return error_for_exception(exc).encode(rid)
        if len(reply) > reply_limit:
            return ErrorBody.bad_request(
                f"the {mtype.name} reply is {len(reply)} bytes, over the client's max_frame_size={reply_limit}; "
                "raise max_frame_size on the client").encode(rid)
        return reply


def _call(env: EnvLike, req: CallRequest) -> Any:
    if req.op == "space":  # an opaque space's question, answered by the env's own space
        path, method, *args = req.args
        space = space_at(getattr(env, req.name), path)
        if method == "sample":
            return _checked(req.name, space.sample())
        if method == "contains":
            return bool(space.contains(*args[:1]))
        return _checked(req.name, space.seed(*args[:1]))
    if isinstance(env, gym.vector.VectorEnv):
        method = getattr(env, req.op, None)  # Sync/AsyncVectorEnv have them; native vector envs may not
        if method is None:
            raise AttributeError(f"{type(env).__name__} has no {req.op}() (a native vector env)")
        if req.op == "call":
            return _checked(req.name, method(req.name, *req.args, **req.kwargs))
        if req.op == "get_attr":
            return _checked(req.name, method(req.name))
        (values,) = req.args
        method(req.name, values)
        return None
    if req.op == "call":
        attr = env.get_wrapper_attr(req.name)
        return _checked(req.name, attr(*req.args, **req.kwargs) if callable(attr) else attr)
    if req.op == "get_attr":
        return _checked(req.name, env.get_wrapper_attr(req.name))
    (value,) = req.args
    env.set_wrapper_attr(req.name, value)
    return None


def _checked(name: str, value: Any) -> Any:
    # An attribute's value must arrive as it is: never as the repr() that info dicts fall back to.
    bad = unencodable(value)
    if bad is not None:
        raise TypeError(f"the value of {name!r} holds a {bad}, which cannot cross the wire")
    return value


def _describe(env: EnvLike, *, data_plane: bool = False) -> ServerHello:
    vector = isinstance(env, gym.vector.VectorEnv)
    metadata = dict(env.metadata)
    autoreset = metadata.pop("autoreset_mode", None)
    spec: SpecData | None = None
    if env.spec is not None:
        try:
            spec = SpecData.from_spec(env.spec)
        except Exception:  # noqa: BLE001  (an odd spec is described as none, never a failed start)
            log.warning("cannot describe the env's spec; clients see none", exc_info=True)
    return ServerHello(
        vector=vector,
        num_envs=int(env.num_envs) if vector else None,  # type: ignore[union-attr]
        observation_space=env.observation_space,
        action_space=env.action_space,
        single_observation_space=env.single_observation_space if vector else None,  # type: ignore[union-attr]
        single_action_space=env.single_action_space if vector else None,  # type: ignore[union-attr]
        metadata=metadata,
        render_mode=env.render_mode,
        spec=spec,
        autoreset_mode=None if autoreset is None else str(getattr(autoreset, "value", autoreset)),
        features=(FEATURE,) if data_plane else (),
    )


class _ServerProtocol(asyncio.Protocol):
    """One connection: handshake, then (once it holds the slot) requests."""

    def __init__(self, server: EnvServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.conn = Connection(MIN_FRAME_SIZE)
        self.state = "new"  # new (-> early) -> auth -> waiting -> active -> closed
        self.handshake = ServerHandshake(server._token)
        self.reply_limit = DEFAULT_MAX_FRAME_SIZE
        self.peer = "client"
        self._timer: asyncio.TimerHandle | None = None
        self._last_seen = 0.0
        self.handover: RegionHandover | None = None  # the data plane's MAP exchange, once offered

    # -- transport callbacks ----------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.peer = str(transport.get_extra_info("peername") or "unix client")
        server = self.server
        if len(server._pending) >= MAX_PENDING:
            # Evict the oldest: a flood of silent connections cannot lock a real client out. It is told
            # why (busy: retry later) and half-closed, so that its HELLO, still arriving, cannot turn the
            # close into a reset that discards the reason unread; at most MAX_EVICTED linger so (for
            # as long as any told peer may take to read, reading nothing), beyond that they are reset.
            oldest = next(iter(server._pending))
            log.warning("%d connections in their handshake: dropping the oldest, %s", MAX_PENDING, oldest.peer)
            oldest._uncount()
            if oldest.transport is not None and len(server._evicted) < MAX_EVICTED:
                server._evicted.add(oldest)
                oldest.transport.write(ErrorBody.busy(
                    f"the server at {server.address} has {MAX_PENDING} connections in their handshake and dropped "
                    "this one, the oldest; retry later").encode(0))
                oldest._close_after_write()
            elif oldest.transport is not None:
                oldest.transport.abort()
        server._pending[self] = None
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # notice dead TCP peers
        # A peer that never finishes its handshake (a port scanner, a stuck client) must go. A
        # dialled server's one peer is its owner, and the env may take long to make: no timer.
        if not server._dial:
            self._timer = asyncio.get_running_loop().call_later(server._hello_timeout, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self.state == "closed":
            return
        try:
            frames = self.conn.receive_data(data)
            for i, frame in enumerate(frames):
                if self.state == "active":
                    if frame.type is MessageType.MAP:
                        self._map(frame, sole=i == len(frames) - 1 and not self.conn.buffered)
                        continue
                    handover = self.handover
                    region = None if handover is None else handover.region
                    transport.write(self.server.handle(frame, self.reply_limit, region))
                    if frame.type is MessageType.CLOSE:
                        self.release()
                        transport.close()
                        return
                else:
                    self._handshake(frame)
                if transport.is_closing() or self.state == "closed":
                    return
            if self.state == "active":
                self._last_seen = self._loop_time()
        except ProtocolError as exc:
            self._drop("protocol", str(exc))

    def pause_writing(self) -> None:
        # Backpressure: a client that sends requests without reading replies stops being read.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self.handover is not None:
            self.handover.close()
        self._uncount()
        self.server._evicted.discard(self)
        if self in self.server._waiting:
            self.server._waiting.remove(self)
        self.release()
        self.state = "closed"
        self.transport = None
        if self.server._dial:
            self.server.stop()  # the one connection of a dialled server ended

    # -- the data plane ----------------------------------------------------
    def _map(self, frame: Frame, *, sole: bool) -> None:
        # A region offered (then checked) by a client on this host: see server/data_plane.py.
        transport, layout = self.transport, self.server._layout
        assert transport is not None
        body = frame.value()
        rid = frame.request_id
        if layout is None:
            raise ProtocolError("MAP before the env is made")
        if self.handover is None:
            self.handover = RegionHandover(layout, transport, lambda: self._drop(
                "protocol", "the region's descriptor did not come after its MAP offer"))
        handover = self.handover
        if type(body) is dict and "check" in body:
            answer = handover.check(body)
        else:
            declined = handover.offer(body, sole)
            answer = {"ready": layout.size} if declined is None else declined
        if isinstance(answer, str):
            transport.write(ErrorBody.bad_request(f"no shared region: {answer}").encode(rid))
        else:
            transport.write(encode_message(MessageType.MAP, rid, answer))

    # -- handshake ---------------------------------------------------------
    def _handshake(self, frame: Frame) -> None:
        # The sequence is protocol.session's; this decides when to answer (the env made, the slot free).
        server = self.server
        handshake = self.handshake
        if self.state not in ("new", "auth"):
            raise ProtocolError(f"unexpected {frame.type.name} while waiting for the server to be free")
        try:
            handshake.receive(frame)
        except AuthenticationError as exc:
            log.warning("authentication failed for %s: wrong token", self.peer)
            self._drop("auth", str(exc))
            return
        if self.state == "new":
            assert handshake.hello is not None
            self.reply_limit = handshake.hello.max_frame_size
            if server._startup_error is not None:  # the env could not be made: say why, then end
                self._report_startup_error()
                return
            if server._hello is None:
                # Dialling, the client's HELLO can arrive while the env is still being made
                # (uvloop reads right after connecting): it is answered once the env is there.
                self.state = "early"
                return
        self._answer_hello()

    def _answer_hello(self) -> None:
        # The HELLO is in (and the env made): challenge, or go on to the slot.
        if self.handshake.state is ServerHandshakeState.AUTH:
            self.state = "auth"
            assert self.transport is not None
            self.transport.write(self.handshake.challenge())
        else:
            self._authenticated()

    def _authenticated(self) -> None:
        self._cancel_timer()
        if self.server._claim(self):
            self._activate()
            return
        self.state = "waiting"
        self.server._waiting.append(self)
        self._timer = asyncio.get_running_loop().call_later(BUSY_GRACE, self._busy)

    def _report_startup_error(self) -> None:
        assert self.transport is not None and self.server._startup_error is not None
        self.transport.write(env_error(self.server._startup_error).encode(self.handshake.reply_id))
        self._close_after_write()
        self.server.stop()

    def env_ready(self) -> None:
        """A dialled server made its env (or failed to): answer a HELLO that came before."""
        if self.state != "early" or self.transport is None:
            return
        self.state = "new"
        if self.server._startup_error is not None:
            self._report_startup_error()
        else:
            self._answer_hello()

    def promote(self) -> None:
        """Called by the server when the slot frees while this connection waits for it."""
        self._cancel_timer()
        if self.transport is None or self.transport.is_closing():
            return
        self.server._active = self
        self._activate()

    def _activate(self) -> None:
        server = self.server
        self.state = "active"
        self._uncount()
        self.conn.max_frame_size = server._max_frame_size
        assert self.transport is not None and server._hello is not None
        self.transport.write(self.handshake.accept(server._hello))
        log.info("serving client %s", self.peer)
        if server._idle_timeout is not None:
            self._last_seen = self._loop_time()
            self._timer = asyncio.get_running_loop().call_later(server._idle_timeout / 4, self._check_idle)

    def _busy(self) -> None:
        if self in self.server._waiting:
            self.server._waiting.remove(self)
        log.warning("rejecting %s: already serving a client", self.peer)
        assert self.transport is not None
        self.transport.write(ErrorBody.busy(
            f"the server at {self.server.address} already serves a client; it serves one client at a time").encode(0))
        self._close_after_write()

    # -- timers and teardown -------------------------------------------------
    def _handshake_timeout(self) -> None:
        self._timer = None
        if self.state in ("new", "auth") and self.transport is not None:
            self._drop("protocol", f"no HELLO (and authentication) within {self.server._hello_timeout:g}s")

    def _check_idle(self) -> None:
        timeout = self.server._idle_timeout
        if self.state != "active" or self.transport is None or timeout is None:
            return
        idle = self._loop_time() - self._last_seen
        if idle >= timeout:
            log.warning("dropping %s: idle for %.0fs (idle_timeout=%gs)", self.peer, idle, timeout)
            self._drop("idle", f"the server dropped this client after {timeout:g}s without a request "
                               "(its idle_timeout); reconnect to go on")
            return
        self._timer = asyncio.get_running_loop().call_later(min(timeout - idle, timeout / 4) + 0.01, self._check_idle)

    def _drop(self, kind: str, reason: str) -> None:
        log.warning("closing connection from %s: %s", self.peer, reason)
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(ErrorBody.closing(kind, reason).encode(0))
        self.release()
        self._close_after_write()

    def _close_after_write(self) -> None:
        # Half-close instead of close: closing with the peer's data unread resets the
        # connection, and the peer would see "connection reset" instead of the reason.
        # The peer hangs up once it has read it; the timer bounds one that does not.
        assert self.transport is not None
        self.state = "closed"
        self._cancel_timer()
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()
            asyncio.get_running_loop().call_later(5.0, transport.abort)
        else:
            transport.close()

    def release(self) -> None:
        """Give up the slot (if held); the next waiting client gets it."""
        self.server._release(self)

    def _uncount(self) -> None:
        self.server._pending.pop(self, None)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()


def _peer_hung_up(proto: _ServerProtocol) -> bool:
    """Whether the active client's socket has reached end of stream (it hung up)."""
    transport = proto.transport
    if transport is None or transport.is_closing():
        return True
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        with socket.socket(fileno=os.dup(sock.fileno())) as dup:  # uvloop hands out a pseudo-socket
            return dup.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env_name(env: EnvLike) -> str:
    spec = env.spec
    return spec.id if spec is not None else type(env).__name__
