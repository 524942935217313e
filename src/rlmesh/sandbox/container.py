"""Sandbox containers: start, readiness, and removal that leaves nothing behind.

The host listens on a Unix socket in a private (0700) directory, and only that socket file is
mounted into the container, read-only: the server inside dials it (``rlmesh serve --dial``).
So the container has no writable host directory, no port is published, readiness is the
server's own connection and handshake (nothing the env prints can fake it), and the server
ends when its owner does, after which the engine removes the container (``AutoRemove``).
The directory is removed as soon as the engine has started the container (the mount and the
listener keep the socket alive), and the server runs under the engine's init (not as PID 1).
What each moment of a start leaves after a SIGKILL, and what removes it, is in
:mod:`rlmesh.sandbox.ownership`.

While it runs, a sandbox follows the container's output into a bounded ring (for the log tail
of errors) and waits for its exit (for the exit code): with ``AutoRemove`` both would be gone
once it exited.

Over 500 lines, with one job: one container's life (create, start, readiness, exit status,
removal); which engine it runs on is :mod:`rlmesh.sandbox.engine`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import anyio

from ..client.connection import ClientConnection
from ..client.listener import Listener
from ..errors import (
    InvalidArgumentError,
    RemoteEnvError,
    RLMeshTimeoutError,
    SandboxError,
    SandboxStartError,
    TransportError,
)
from ..protocol.data_plane import DEFAULT_MAX_REGION_SIZE
from ..protocol.faults import remote_error_class
from . import ownership
from ._docker import DockerClient, acquire_docker, not_found, release_docker
from .engine import Engine
from .library_hints import add_sandbox_notes, sandbox_note_context
from .options import RUNTIME_DIR_IN_CONTAINER, ContainerOptions, default_memory, memory_bytes
from .output_tail import OutputTail

__all__ = ["Engine", "Sandbox", "cleanup_sandboxes", "list_sandboxes"]

log = logging.getLogger("rlmesh.sandbox")

SOCKET_IN_CONTAINER = f"{RUNTIME_DIR_IN_CONTAINER}/env.sock"
HANDOFF_IN_CONTAINER = f"{RUNTIME_DIR_IN_CONTAINER}/handoff.sock"
HOST_SOCKET = "host.sock"
TMPFS_SIZE = 1 << 30  # /tmp in the container; also charged to (and bounded by) its memory limit
LOG_LINES = 100  # the output kept for errors
LOG_LINE_CHARS = 2000
REMOVAL_TIMEOUT = 20.0
# How long a start waits for the engine to hold its exit watcher (an engine before API 1.30
# answers a wait only at the exit: then it starts anyway, after this).
WAIT_REGISTRATION_TIMEOUT = 5.0

list_sandboxes = ownership.list_sandboxes
cleanup_sandboxes = ownership.cleanup_sandboxes
RELAY_PORT = "7000/tcp"
# One math-library thread per sandbox process, as for any env worker (lanes scale by shards, not
# by BLAS threads): it also spares each start the CPU OpenBLAS burns spinning up a thread per
# core when NumPy is imported (about 60 ms of a ~250 ms start). `env=` overrides each.
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Sandbox:
    """One container serving one env to this process over a Unix socket it dials.

    Args:
        image: The image tag to run.
        command: The container command without ``--address`` (for a prebuilt image, the
            arguments appended to its ENTRYPOINT).
        options: Container options.
        source: The env source (recorded in a label, for ``rlmesh sandbox ls``).
        max_frame_size: The largest frame the host accepts from the server.
        data_plane: What the dialled connection offers (``auto`` or ``socket``).
        max_region_size: The largest shared region the host creates for it.
    """

    def __init__(self, image: str, command: list[str], options: ContainerOptions, source: str,
                 max_frame_size: int, engine: Engine | None = None, lease: float = 60.0,
                 data_plane: str = "auto", max_region_size: int = DEFAULT_MAX_REGION_SIZE) -> None:
        self.engine = engine or Engine.choose(None, None)
        self.lease = lease
        self.relay_id: str | None = None
        self.token: str | None = None
        self.address: str | None = None
        self.local_address: str | None = None  # relayed, on this machine: the relay's own address
        self.image = image
        self.command = command
        self.options = options
        self.source = source
        self.max_frame_size = max_frame_size
        self.data_plane = data_plane  # what the dialled connection offers (see ClientConnection.accept)
        self.max_region_size = max_region_size
        self.container_id: str | None = None
        self.socket_dir: str | None = None
        self.memory: int | None = None
        self.exit_code: int | None = None
        self._timeout: float | None = None  # connect_timeout, and its deadline on the loop's clock
        self._deadline: float | None = None
        self._docker: DockerClient | None = None
        self._exit: asyncio.Task[int] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._gvisor = False  # runs under gVisor (the runtime asked for, else the engine's default)
        self._output = OutputTail(LOG_LINES)

    @property
    def logs(self) -> str:
        """The last lines of the container's output (each cut to 2000 characters)."""
        return self._output.text()

    async def _config(self, docker: DockerClient, socket_path: str | None, token: str | None = None) -> dict[str, Any]:
        opts = self.options
        info = await docker.info()
        if opts.runtime is not None:
            runtimes = sorted((info.get("Runtimes") or {}).keys())
            if opts.runtime not in runtimes:
                message = f"runtime={opts.runtime!r} is not a runtime of this Docker engine (it has {runtimes})."
                raise InvalidArgumentError(message + (" " + _RUNSC_HELP if opts.runtime == "runsc" else ""))
        self.memory = memory_bytes(opts.memory) if opts.memory is not None else default_memory(
            int(info.get("MemTotal") or 0))
        self._gvisor = _is_gvisor(opts.runtime or info.get("DefaultRuntime") or "runc", info)
        host: dict[str, Any] = {
            "Binds": [*([f"{socket_path}:{SOCKET_IN_CONTAINER}:ro"] if socket_path else []), *opts.binds()],
            "AutoRemove": True,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "ReadonlyRootfs": True,
            "Tmpfs": {"/tmp": f"rw,nosuid,nodev,mode=1777,size={min(TMPFS_SIZE, self.memory)}"},
            "NetworkMode": "bridge" if opts.network else "none",
            "Memory": self.memory,
            "MemorySwap": self.memory,  # no swap: a memory bomb ends, it does not thrash
            # An init as PID 1 (the engine's docker-init, tini): it reaps the zombies of orphaned
            # processes and forwards signals, so the server (its child) gets the default action of
            # a signal it does not handle, as any process does, instead of PID 1's "ignore".
            "Init": _has_init(info),
        }
        if opts.cpus is not None:
            host["NanoCpus"] = int(opts.cpus * 1e9)
        if opts.pids_limit is not None:
            host["PidsLimit"] = opts.pids_limit
        if opts.gpus is not None:
            host["DeviceRequests"] = opts.device_requests()
        if opts.devices:
            host["Devices"] = opts.device_mappings()
        if opts.runtime is not None:
            host["Runtime"] = opts.runtime
        env = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "HOME": "/tmp", **ONE_THREAD, **opts.env}
        if socket_path is not None:  # it dials its owner's socket
            tail = ["--dial"]
        else:  # it listens in the volume it shares with its relay, and asks for the token
            assert token is not None
            env["RLMESH_TOKEN"] = token
            tail = ["--require-token", "--lease", f"{self.lease:g}"]
            if self._hands_off:
                tail += ["--handoff", HANDOFF_IN_CONTAINER]
        me = ownership.owner()
        return {
            "Image": self.image,
            "Cmd": [*self.command, "--address", f"unix://{SOCKET_IN_CONTAINER}", *tail],
            "User": opts.run_as(),
            "Env": [f"{k}={v}" for k, v in env.items()],
            "Labels": {
                ownership.LABEL: "1", ownership.LABEL_OWNER: me.label, ownership.LABEL_SESSION: me.session,
                ownership.LABEL_SOURCE: self.source[:200], ownership.LABEL_SOCKET_DIR: self.socket_dir or "",
            },
            "NetworkDisabled": not opts.network,
            "HostConfig": host,
        }

    async def start(self, timeout: float | None) -> ClientConnection:
        """Start the container and return a handshaken connection to its server.

        Raises:
            SandboxStartError: The container exited before its server was ready.
            RLMeshTimeoutError: It was not ready within ``timeout`` seconds, the engine's work
                (creating and starting the container) included: a deadline, not a wait.
            ProtocolError: Its server broke the protocol during the handshake.
        """
        self._timeout = timeout
        self._deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        self._docker = docker = await acquire_docker(self.engine.host)
        try:
            with self._engine_deadline("removing the sandboxes of dead owners"):
                await ownership.reap_dead_owners_once(docker)
            if self.engine.relay:
                return await self._start_relayed(docker, timeout)
            return await self._start_dialled(docker, timeout)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close()
            raise

    async def _run(self, docker: DockerClient, config: dict[str, Any]) -> str:
        self.container_id = cid = await docker.create(config)
        ownership.register(cid, self.socket_dir, self.engine.host)
        # The engine must hold the exit watcher before the start, or a quick exit goes unseen.
        # Whatever the watcher ends with is read (_retrieve), even when nobody asks for it.
        registered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._exit = exit_task = asyncio.ensure_future(docker.wait_exit(cid, registered))
        exit_task.add_done_callback(_retrieve)
        watched: set[asyncio.Future[Any]] = {registered, exit_task}
        await asyncio.wait(watched, timeout=WAIT_REGISTRATION_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        failure = exit_task.exception() if exit_task.done() and not exit_task.cancelled() else None
        if failure is not None:
            if not not_found(failure):
                raise failure
            raise SandboxStartError(
                f"sandbox container {cid[:12]} for {self.source} was removed before it started: something "
                "outside this process removed it (a `docker rm -f`, `docker container prune` or "
                "`rlmesh sandbox cleanup --all`); start the env again",
                container_id=cid,
            ) from failure
        await docker.start(cid)
        self._follower = asyncio.ensure_future(self._follow(docker, cid))
        self._follower.add_done_callback(_retrieve)
        log.info("sandbox %s started from %s for %s", cid[:12], self.image, self.source)
        return cid

    async def _start_dialled(self, docker: DockerClient, timeout: float | None) -> ClientConnection:
        listener = None
        try:
            self.socket_dir = tempfile.mkdtemp(prefix=ownership.socket_dir_prefix(),
                                               dir=os.environ.get("RLMESH_RUNTIME_DIR"))
            os.chmod(self.socket_dir, 0o700)
            socket_path = os.path.join(self.socket_dir, HOST_SOCKET)
            listener = await Listener.open(socket_path, max_frame_size=self.max_frame_size)
            if os.getuid() == 0:  # the unprivileged container user must be able to connect
                uid, _, gid = self.options.run_as().partition(":")
                os.chown(socket_path, int(uid), int(gid))
            os.chmod(socket_path, 0o600)
            with self._engine_deadline("creating and starting the container"):
                cid = await self._run(docker, await self._config(docker, socket_path))
            # The engine mounted the socket when it started the container: its directory has
            # done its job, and once gone no SIGKILL can leave it behind (the listener and the
            # mount keep the socket itself alive).
            self._remove_socket_dir()
            conn = await self._await_server(listener, timeout)
            transport = conn.protocol.transport
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is not None:
                ownership.set_connection_fd(cid, sock.fileno())
            return conn
        finally:
            if listener is not None:
                listener.close()

    async def _start_relayed(self, docker: DockerClient, timeout: float | None) -> ClientConnection:
        # The env container keeps no network: its server listens in a volume it shares with a
        # relay container, which publishes one port. A fresh token per sandbox guards it.
        self.token = token = secrets.token_urlsafe(32)
        with self._engine_deadline("creating and starting the relay and the container"):
            config = await self._config(docker, None, token)
            self.relay_id = await docker.create(self._relay_config(config))
            ownership.register(self.relay_id, None, self.engine.host)
            await docker.start(self.relay_id)
            port = await docker.published_port(self.relay_id, RELAY_PORT)
            config["HostConfig"]["VolumesFrom"] = [self.relay_id]
            await self._run(docker, config)
            self.address = f"tcp://{self.engine.address_host}:{port}"
            if self.engine.local:
                # On this machine the relay's own address skips the engine's port proxy (a hop
                # that costs as much as a step); the published port serves other hosts.
                relay_ip = await docker.container_ip(self.relay_id)
                if relay_ip is not None:
                    self.local_address = f"tcp://{relay_ip}:7000"
                    if not self.engine.published:
                        self.address = self.local_address
        return await self._await_relayed(self.local_address or self.address, token, timeout)

    @property
    def _hands_off(self) -> bool:
        # The relay passes each client's socket to the server and leaves the data path, except
        # into gVisor: its sentry cannot take a host descriptor over a host Unix socket, so
        # the relay forwards the bytes instead (one more hop per step).
        return not self._gvisor

    def _relay_config(self, env_config: dict[str, Any]) -> dict[str, Any]:
        bind = "127.0.0.1" if self.engine.address_host in ("127.0.0.1", "localhost", "::1") else "0.0.0.0"
        return {
            "Image": self.image,
            "Entrypoint": ["python", "-m", "rlmesh.relay"],
            "Cmd": ["--listen", "tcp://0.0.0.0:7000",
                    *(["--handoff", f"unix://{HANDOFF_IN_CONTAINER}"] if self._hands_off
                      else ["--upstream", f"unix://{SOCKET_IN_CONTAINER}"]),
                    "--lease", f"{self.lease + 30:g}"],  # outlives its sandbox's own lease
            "User": env_config["User"],
            "Env": ["PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "HOME=/tmp"],
            "ExposedPorts": {RELAY_PORT: {}},
            "Volumes": {RUNTIME_DIR_IN_CONTAINER: {}},  # anonymous: removed with the relay
            "Labels": {**env_config["Labels"], "rlmesh.relay": "1"},
            "HostConfig": {
                "AutoRemove": True, "CapDrop": ["ALL"], "SecurityOpt": ["no-new-privileges"], "ReadonlyRootfs": True,
                "Tmpfs": {"/tmp": "rw,nosuid,nodev,size=16m"}, "Memory": 128 << 20, "MemorySwap": 128 << 20,
                "PidsLimit": 64, "NetworkMode": "bridge",
                "PortBindings": {RELAY_PORT: [{"HostIp": bind, "HostPort": ""}]},
            },
        }

    async def _await_relayed(self, address: str, token: str, timeout: float | None) -> ClientConnection:
        assert self._exit is not None and self.container_id is not None
        loop = asyncio.get_running_loop()
        deadline = self._deadline
        while True:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise RLMeshTimeoutError(
                    f"sandbox {self.container_id[:12]} for {self.source} was not reachable through its relay "
                    f"within connect_timeout={timeout}s; last output:\n{self.logs}"
                )
            attempt = asyncio.ensure_future(ClientConnection.open(
                address, connect_timeout=min(left or 5.0, 5.0), max_frame_size=self.max_frame_size,
                token=token.encode(), require_auth=True,
            ))
            await asyncio.wait({attempt, self._exit}, return_when=asyncio.FIRST_COMPLETED)
            if attempt.done() and attempt.exception() is None:
                conn: ClientConnection = attempt.result()
                return conn
            if self._exit.done():
                if not attempt.done():
                    attempt.cancel()
                await asyncio.gather(attempt, return_exceptions=True)
                await self._drain_output()
                raise SandboxStartError(
                    f"sandbox container for {self.source} exited before its server was ready",
                    container_id=self.container_id, exit_code=self._exit_code(), logs=self.logs,
                )
            failure = attempt.exception()
            if not isinstance(failure, (TransportError, RLMeshTimeoutError)):
                raise failure  # type: ignore[misc]  # an authentication or protocol failure: not a matter of time
            await asyncio.sleep(0.05)

    async def _await_server(self, listener: Any, timeout: float | None) -> ClientConnection:
        assert self._exit is not None and self.container_id is not None
        accept = asyncio.ensure_future(listener.accept(data_plane=self.data_plane,
                                                     max_region_size=self.max_region_size))
        try:
            with anyio.fail_after(self._left()):
                await asyncio.wait({accept, self._exit}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError as exc:
            raise RLMeshTimeoutError(
                f"sandbox {self.container_id[:12]} for {self.source} did not connect within "
                f"connect_timeout={timeout}s; last output:\n{self.logs}"
            ) from exc
        finally:
            if not accept.done():
                accept.cancel()
                await asyncio.gather(accept, return_exceptions=True)
        if accept.done() and not accept.cancelled():
            failure = accept.exception()
            if failure is None:
                conn: ClientConnection = accept.result()
                log.debug("sandbox %s: its server connected and said HELLO", self.container_id[:12])
                return conn
            if isinstance(failure, RemoteEnvError):
                # The server could not make the env, and said why: that line first, with the
                # env's own exception type (gymnasium.error.NameNotFound, say) mixed in.
                code, _ = await self.exit_status(wait=5.0)  # the server exits once it said it
                cls = remote_error_class(failure.remote_type, SandboxStartError, ("m",))
                error = cls(
                    f"the env for {self.source} could not be made in its sandbox: "
                    f"{failure.remote_type.rpartition('.')[2]}: {failure.remote_message}",
                    container_id=self.container_id, exit_code=code, logs=self.logs,
                )
                add_sandbox_notes(failure, **sandbox_note_context(self.options))
                for note in getattr(failure, "__notes__", ()):
                    error.add_note(note)
                raise error from failure
            if not isinstance(failure, TransportError):
                raise failure
            code, _ = await self.exit_status(wait=5.0)  # the server hung up: say how it ended
            raise SandboxStartError(
                f"the server of the sandbox for {self.source} hung up during its handshake",
                container_id=self.container_id, exit_code=code, logs=self.logs,
            ) from failure
        await self._drain_output()
        raise SandboxStartError(
            f"sandbox container for {self.source} exited before its server was ready",
            container_id=self.container_id, exit_code=self._exit_code(), logs=self.logs,
        )

    def _exit_code(self) -> int | None:
        if self._exit is None or not self._exit.done() or self._exit.cancelled() or self._exit.exception():
            return None
        return self._exit.result()

    async def _follow(self, docker: DockerClient, cid: str) -> None:
        partial = ""
        with contextlib.suppress(SandboxError):
            stream = docker.follow_logs(cid)
            async with contextlib.aclosing(stream):
                async for chunk in stream:
                    # Hostile output is bounded: a line is cut, only the last lines are kept.
                    partial += chunk[: LOG_LINE_CHARS * 4]
                    *lines, partial = partial.split("\n")
                    for line in lines:
                        self._output.add(line[:LOG_LINE_CHARS])
                    partial = partial[-LOG_LINE_CHARS:]
        if partial:
            self._output.add(partial[:LOG_LINE_CHARS])

    async def _drain_output(self) -> None:
        # The output stream ends when the container exits; let it deliver its last lines.
        if self._follower is not None and not self._follower.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(self._follower)

    async def exit_status(self, wait: float = 2.0) -> tuple[int | None, str | None]:
        """``(exit code, who killed it)`` once the container exited (None if unknown).

        The second item is ``"memory"`` (the kernel's OOM killer, at the memory limit),
        ``"stopped"`` (the engine stopped, or is stopping, and its containers with it; the exit
        code may then be unknown), ``"engine"`` (a ``docker kill``, ``stop`` or ``rm -f``: not
        ours, we were still using it) or None (it exited by itself, or nothing says). It comes
        from the container's state while the engine still has it, then from the engine's recent
        events.
        """
        if self._exit is None or self._docker is None or self.container_id is None:
            return None, None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await asyncio.shield(self._exit)
        code = self._exit_code()
        if (code is not None or self._exit.done()) and not await self._docker.engine_reachable():
            return code, "stopped"
        if code is None:
            return None, None
        state = await self._docker.state(self.container_id)
        actions = await self._docker.container_events(self.container_id) or []
        if code == 137 and not state.get("OOMKilled") and not {"oom", "kill"} & set(actions):
            # A SIGKILL with no cause on record yet: on a busy engine the events may be slow to
            # come (a second was not enough under a full test run); ask once more, for longer.
            actions = await self._docker.container_events(self.container_id, wait=5.0) or actions
        await self._drain_output()
        if state.get("OOMKilled") or "oom" in actions:
            return code, "memory"
        if "kill" in actions:
            return code, "engine"
        return code, None

    def _left(self) -> float | None:
        """What is left of connect_timeout (None: no deadline)."""
        if self._deadline is None:
            return None
        return max(self._deadline - asyncio.get_running_loop().time(), 0.0)

    @contextlib.contextmanager
    def _engine_deadline(self, what: str) -> Iterator[None]:
        """Bound engine calls by what is left of connect_timeout: a slow engine counts against it."""
        try:
            with anyio.fail_after(self._left()):
                yield
        except TimeoutError as exc:
            if isinstance(exc, RLMeshTimeoutError):
                raise
            raise RLMeshTimeoutError(
                f"sandbox for {self.source} was not ready within connect_timeout={self._timeout}s: the Docker "
                f"engine was still {what} (a busy or stuck engine: raise connect_timeout, or look at "
                "`docker info`)"
            ) from exc

    def _remove_socket_dir(self) -> None:
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.socket_dir = None

    async def close(self, grace: float = 2.0) -> None:
        """Stop and remove the container (and its relay) and the socket directory; waits until
        they are gone. Idempotent."""
        docker, self._docker = self._docker, None
        cid, self.container_id = self.container_id, None
        relay, self.relay_id = self.relay_id, None
        try:
            for container, what in ((cid, "sandbox"), (relay, "relay")):
                if container is not None and docker is not None:
                    await docker.remove(container, grace=grace if what == "sandbox" else 0)
                    await docker.wait_gone(container, REMOVAL_TIMEOUT)
                    log.info("%s %s removed", what, container[:12])
        finally:
            for container in (cid, relay):
                if container is not None:
                    ownership.unregister(container)
            for task in (self._follower, self._exit):
                if task is not None and not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            self._remove_socket_dir()
            if docker is not None:
                await release_docker(docker)


def _retrieve(task: asyncio.Future[Any]) -> None:
    # Read a background task's outcome, so that a failure nobody waited for (a 404 for a
    # container removed meanwhile) is not logged as "Task exception was never retrieved".
    if not task.cancelled():
        task.exception()


def _has_init(info: dict[str, Any]) -> bool:
    """Whether the engine has its init binary (``docker-init``): it reports ``N/A`` when not."""
    return (info.get("InitCommit") or {}).get("ID") != "N/A"


def _is_gvisor(runtime: str, info: dict[str, Any]) -> bool:
    """Whether the engine's runtime ``runtime`` is gVisor: named so, or an alias of its binary."""
    spec = (info.get("Runtimes") or {}).get(runtime) or {}
    path = spec.get("path") if isinstance(spec, dict) else None
    return "runsc" in runtime or "gvisor" in runtime or (isinstance(path, str) and "runsc" in os.path.basename(path))


_RUNSC_HELP = """To use gVisor, install it (Debian: `apt-get install runsc`) and register it in
/etc/docker/daemon.json, then restart dockerd:

    {"runtimes": {"runsc": {"path": "/usr/bin/runsc",
                            "runtimeArgs": ["--network=none", "--platform=ptrace", "--host-uds=all"]}}}

(`scripts/dev setup` does this on the project's machines.)"""
