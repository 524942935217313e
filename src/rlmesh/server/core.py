"""EnvServer: serve a Gymnasium env over a stream, an env of its own to each client.

The server runs on asyncio with plain protocol callbacks: a request is decoded,
applied to the client's env and answered inside ``data_received``, with no task or
thread hop on the hot path. Env calls are synchronous: clients served at once
(``max_clients``, each with its own env made by the factory) take turns on one thread.
Several clients let ``gym.make(env.spec)`` and ``check_env``'s close check open a second
env beside the first; a dialled server (a sandbox) serves its owner only.

This module is the server's lifecycle: making the env, listening (or dialling), signals, the
lease and the stop. Each connection, and the one client slot they compete for, are
:mod:`~rlmesh.server.connection`'s; what a request does to the env is
:mod:`~rlmesh.server.dispatch`'s; the options are :class:`~rlmesh.server.options.ServerOptions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import gymnasium as gym

from .._address import Address
from ..errors import ConnectError, InvalidArgumentError
from ..protocol.data_plane import Layout
from ._types import EnvLike
from .connection import ClientSlots, ServerConnection
from .data_plane import supported
from .dispatch import describe
from .handoff import HandoffListener
from .options import HELLO_TIMEOUT, IDLE_TIMEOUT, ServerOptions

__all__ = ["HELLO_TIMEOUT", "IDLE_TIMEOUT", "EnvServer"]

log = logging.getLogger("rlmesh.server")


class EnvServer:
    """Serve a Gymnasium env (or vector env) to remote clients.

    Args:
        env_or_factory: The env, or a zero-argument callable that creates it (called when
            serving starts, and again for each client beyond the first served at once; an env
            given as it is serves one client at a time).
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
        max_clients: Clients served at once, each with its own env (default 4; 1 dialling).
            Past it, a client is told the server is busy.

    Raises:
        InvalidArgumentError: TCP without a token (and not ``insecure`` on loopback), or a
            bad option.
    """

    __signature__: ClassVar[inspect.Signature]  # env_or_factory, then ServerOptions.check's (set below)

    def __init__(self, env_or_factory: EnvLike | Callable[..., EnvLike], address: str, **options: Any) -> None:
        self.options = ServerOptions.check(address, **options)
        self._address: Address = self.options.address  # its port, once bound (port 0: the system's)
        #: The env could not be made (a dialled server tells its client, then stops).
        self.startup_error: Exception | None = None
        self._env_or_factory = env_or_factory
        self._env: EnvLike | None = None
        self._idle: list[EnvLike] = []  # envs no client holds (the first one included, once made)
        self._made: list[EnvLike] = []  # every env made, closed when serving ends
        factory = callable(env_or_factory) and not isinstance(env_or_factory, (gym.Env, gym.vector.VectorEnv))
        self.slots = ClientSlots(self._vacated, self.options.max_clients if factory else 1)
        #: The server's HELLO, encoded once the env is made (None until then).
        self.hello_parts: tuple[dict[str, Any], list[Any]] | None = None
        self._data_plane_offered = False
        self.layout: Layout | None = None  # the data plane's, from the env's spaces
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
        """The first env served (created on first use when a factory was given)."""
        if self._env is None:
            self._env = self._make()
            self._idle.append(self._env)
            self.is_vector = isinstance(self._env, gym.vector.VectorEnv)
        return self._env

    def _make(self, render_mode: str | None = None) -> EnvLike:
        made = self._env_or_factory
        if not isinstance(made, (gym.Env, gym.vector.VectorEnv)) and callable(made):
            if render_mode is None:
                made = made()
            elif _takes_render_mode(made):
                made = made(render_mode=render_mode)
            else:
                raise InvalidArgumentError(
                    f"this server's env factory takes no render_mode, so it serves its env's own render mode "
                    f"({self.env.render_mode!r}) only, not {render_mode!r}")
        if not isinstance(made, (gym.Env, gym.vector.VectorEnv)):
            raise TypeError(f"env factory returned {type(made).__name__}, not a gymnasium env")
        self._made.append(made)
        if render_mode is not None and made.render_mode != render_mode:
            raise InvalidArgumentError(f"this server's env was asked for render_mode={render_mode!r} and was made "
                                       f"with {made.render_mode!r}")
        return made

    def lend_env(self, render_mode: str | None = None) -> EnvLike:
        """An env for a client taking a slot: an idle one (in ``render_mode``, when the client asked
        for one), else a new one from the factory.

        Raises:
            InvalidArgumentError: A render mode the server cannot make its env with.
            Exception: The factory's, when a new env cannot be made.
        """
        first = self.env
        want = first.render_mode if render_mode is None else render_mode
        for env in self._idle:
            if env.render_mode == want:
                self._idle.remove(env)
                return env
        if want != first.render_mode and self._env_or_factory is first:
            raise InvalidArgumentError(f"this server serves one env object, in render_mode={first.render_mode!r}; "
                                       f"it cannot serve render_mode={want!r} (serve a source or a factory that "
                                       "takes render_mode)")
        made = self._make(None if want == first.render_mode else want)
        if made.observation_space != first.observation_space or made.action_space != first.action_space:
            self._made.remove(made)
            made.close()
            raise TypeError("the env factory made an env with other spaces than the first; every client is "
                            "described the first env's")
        return made

    def hello_for(self, env: EnvLike) -> tuple[dict[str, Any], list[Any]]:
        """The HELLO that describes ``env`` to its client (the first env's, unless another render mode)."""
        assert self.hello_parts is not None
        if env.render_mode == self.env.render_mode:
            return self.hello_parts
        return describe(env, data_plane=self._data_plane_offered).encode_parts()

    def give_back_env(self, env: EnvLike) -> None:
        """A client left: its env serves the next one (the first env first)."""
        if env is self._env:
            self._idle.insert(0, env)
        else:
            self._idle.append(env)

    def serve(self) -> None:
        """Serve until SIGTERM or SIGINT, then close the env and remove the socket."""
        try:
            import uvloop  # optional speed-up
        except ImportError:
            uvloop = None  # type: ignore[assignment]  # the module, or None when not installed
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
        if self.options.dial:
            # Dial first, then make the env: if making it fails, the client hears why (an ERROR
            # answering its HELLO, with the exception's type) instead of reading a log.
            await self._dial_once(loop)
            try:
                env = self.env
            except Exception as exc:
                self.startup_error = exc
                for early in list(self.slots.pending):
                    early.env_ready()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.options.hello_timeout):
                        await self._stop.wait()  # until the client has heard it (or is gone)
                raise
        else:
            env = self.env
        num_envs = int(env.num_envs) if isinstance(env, gym.vector.VectorEnv) else None
        try:
            self.layout = Layout(env.observation_space, num_envs)
        except ValueError as exc:  # too many arrays to place: served over the socket, as before
            log.info("no shared memory for this env: %s", exc)
            self.layout = None
        data_plane = self.layout is not None and bool(self.layout.size) and supported()
        self._data_plane_offered = data_plane
        self.hello_parts = describe(env, data_plane=data_plane).encode_parts()
        if self.options.dial:
            for early in list(self.slots.pending):  # connected above; a HELLO may be waiting
                early.env_ready()
        elif addr.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(addr.path)
            server = await loop.create_unix_server(lambda: ServerConnection(self), addr.path)
        else:
            assert addr.host is not None and addr.port is not None
            server = await loop.create_server(lambda: ServerConnection(self), addr.host, addr.port, ssl=self.options.tls)
            if addr.port == 0:
                port = server.sockets[0].getsockname()[1]
                self._address = Address(host=addr.host, port=port)
        handoff = None
        if self.options.handoff is not None:
            handoff = HandoffListener(self.options.handoff, self._adopt)
        handled: list[signal.Signals] = []
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, self._stop.set)
                    handled.append(sig)
        lease_timer = None
        if self.options.lease is not None and not self.options.dial:
            self.slots.vacant_since = loop.time()
            lease_timer = loop.call_later(self.options.lease, self._check_lease)
        try:
            if self.options.ready_message is not None and server is not None:
                print(f"{self.options.ready_message} on {self.address}", flush=True)
            self.ready.set()
            auth = "token" if self.options.token else "none"
            log.info("serving %s %s %s (authentication: %s%s)", _env_name(env), "to" if self.options.dial else "on",
                     self.address, auth, ", TLS" if self.options.tls else "")
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
            for conn in self.slots.every():
                if conn.transport is not None:
                    conn.transport.abort()
            if server is not None:
                await server.wait_closed()
            try:
                for made in reversed(self._made):  # the first env last, as before: every one closed
                    try:
                        made.close()
                    except Exception as exc:
                        if made is env:
                            raise
                        log.warning("closing an env of a client failed: %s: %s", type(exc).__name__, exc)
            finally:
                if addr.path is not None and server is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(addr.path)
                log.info("server %s %s stopped", "to" if self.options.dial else "on", self.address)

    async def _dial_once(self, loop: asyncio.AbstractEventLoop) -> None:
        # The client listens and the server connects: a sandbox reaches its owner through one
        # socket file mounted read-only, and exits when that one connection ends.
        path = self._address.path
        assert path is not None
        deadline = loop.time() + (self.options.lease or 60.0)
        while True:
            try:
                await loop.create_unix_connection(lambda: ServerConnection(self), path)
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
        task = asyncio.ensure_future(loop.connect_accepted_socket(lambda: ServerConnection(self), sock))
        self._adopting[task] = sock
        task.add_done_callback(self._adopted)

    def _adopted(self, task: asyncio.Future[Any]) -> None:
        self._adopting.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not serve a handed-over connection: %r", task.exception())

    def _check_lease(self) -> None:
        # Listening with a lease: stop when no client has been served for `lease` seconds
        # (after start, or since the last one left), so an owner that vanished leaves nothing.
        lease = self.options.lease
        assert lease is not None and self._stop is not None
        loop = asyncio.get_running_loop()
        if self.slots.active:
            self.slots.vacant_since = loop.time()
        idle = loop.time() - self.slots.vacant_since
        if idle >= lease:
            log.warning("no client for %.0fs (lease=%gs): stopping", idle, lease)
            self._stop.set()
            return
        loop.call_later(min(lease - idle, lease / 4) + 0.01, self._check_lease)

    def _vacated(self) -> None:
        # The active client left: a dialled server has one client in its life.
        if self.options.dial and self._stop is not None:
            self._stop.set()


def _env_name(env: EnvLike) -> str:
    spec = env.spec
    return spec.id if spec is not None else type(env).__name__


def _signature() -> inspect.Signature:
    check = inspect.signature(ServerOptions.check)
    return check.replace(parameters=[
        inspect.Parameter("env_or_factory", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          annotation="EnvLike | Callable[[], EnvLike]"),
        *check.parameters.values(),
    ], return_annotation=None)


EnvServer.__signature__ = _signature()


def _takes_render_mode(factory: Callable[..., Any]) -> bool:
    """Whether a factory can be called with ``render_mode=``."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "render_mode" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
