"""Sandbox containers: start, readiness, and removal that leaves nothing behind.

The host listens on a Unix socket in a private (0700) directory, and only that socket file is
mounted into the container, read-only: the server inside dials it (``rlmesh serve --dial``).
So the container has no writable host directory, no port is published, readiness is the
server's own connection and handshake (nothing the env prints can fake it), and the server
ends when its owner does, after which the engine removes the container (``AutoRemove``).

While it runs, a sandbox follows the container's output into a bounded ring (for the log tail
of errors) and waits for its exit (for the exit code): with ``AutoRemove`` both would be gone
once it exited.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
import tempfile
from typing import Any

import anyio

from ..client.connection import ClientConnection
from ..errors import InvalidArgumentError, RemoteEnvError, RLMeshTimeoutError, SandboxError, SandboxStartError
from ..protocol.faults import remote_error_class
from ._docker import DockerClient, acquire_docker, release_docker
from . import ownership
from .options import RUNTIME_DIR_IN_CONTAINER, ContainerOptions, default_memory, memory_bytes

__all__ = ["Sandbox", "cleanup_sandboxes", "list_sandboxes"]

log = logging.getLogger("rlmesh.sandbox")

SOCKET_IN_CONTAINER = f"{RUNTIME_DIR_IN_CONTAINER}/env.sock"
HOST_SOCKET = "host.sock"
TMPFS_SIZE = 1 << 30  # /tmp in the container; also charged to (and bounded by) its memory limit
LOG_LINES = 100  # the output kept for errors
LOG_LINE_CHARS = 2000
REMOVAL_TIMEOUT = 20.0

list_sandboxes = ownership.list_sandboxes
cleanup_sandboxes = ownership.cleanup_sandboxes


class Sandbox:
    """One container serving one env to this process over a Unix socket it dials.

    Args:
        image: The image tag to run.
        command: The container command without ``--address`` (for a prebuilt image, the
            arguments appended to its ENTRYPOINT).
        options: Container options.
        source: The env source (recorded in a label, for ``rlmesh sandbox ls``).
        max_frame_size: The largest frame the host accepts from the server.
    """

    def __init__(self, image: str, command: list[str], options: ContainerOptions, source: str,
                 max_frame_size: int) -> None:
        self.image = image
        self.command = command
        self.options = options
        self.source = source
        self.max_frame_size = max_frame_size
        self.container_id: str | None = None
        self.socket_dir: str | None = None
        self.memory: int | None = None
        self.exit_code: int | None = None
        self._docker: DockerClient | None = None
        self._exit: asyncio.Task[int] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES)

    @property
    def logs(self) -> str:
        """The last lines of the container's output (each cut to 2000 characters)."""
        return "\n".join(self._lines)

    async def _config(self, docker: DockerClient, socket_path: str) -> dict[str, Any]:
        opts = self.options
        info = await docker.info()
        if opts.runtime is not None:
            runtimes = sorted((info.get("Runtimes") or {}).keys())
            if opts.runtime not in runtimes:
                message = f"runtime={opts.runtime!r} is not a runtime of this Docker engine (it has {runtimes})."
                raise InvalidArgumentError(message + (" " + _RUNSC_HELP if opts.runtime == "runsc" else ""))
        self.memory = memory_bytes(opts.memory) if opts.memory is not None else default_memory(
            int(info.get("MemTotal") or 0))
        host: dict[str, Any] = {
            "Binds": [f"{socket_path}:{SOCKET_IN_CONTAINER}:ro", *opts.binds()],
            "AutoRemove": True,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "ReadonlyRootfs": True,
            "Tmpfs": {"/tmp": f"rw,nosuid,nodev,mode=1777,size={min(TMPFS_SIZE, self.memory)}"},
            "NetworkMode": "bridge" if opts.network else "none",
            "Memory": self.memory,
            "MemorySwap": self.memory,  # no swap: a memory bomb ends, it does not thrash
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
        env = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "HOME": "/tmp", **opts.env}
        me = ownership.owner()
        return {
            "Image": self.image,
            "Cmd": [*self.command, "--address", f"unix://{SOCKET_IN_CONTAINER}", "--dial"],
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
        """Start the container and return the connection its server dialled in on.

        Raises:
            SandboxStartError: The container exited before its server connected.
            RLMeshTimeoutError: It did not connect within ``timeout`` seconds.
            ProtocolError: Its server broke the protocol during the handshake.
        """
        self._docker = docker = await acquire_docker()
        listener = None
        try:
            await ownership.reap_dead_owners_once(docker)
            self.socket_dir = tempfile.mkdtemp(prefix=f"{ownership.SOCKET_DIR_PREFIX}{os.getpid()}-",
                                               dir=os.environ.get("RLMESH_RUNTIME_DIR"))
            os.chmod(self.socket_dir, 0o700)
            socket_path = os.path.join(self.socket_dir, HOST_SOCKET)
            listener = await ClientConnection.listen(socket_path, max_frame_size=self.max_frame_size)
            if os.getuid() == 0:  # the unprivileged container user must be able to connect
                uid, _, gid = self.options.run_as().partition(":")
                os.chown(socket_path, int(uid), int(gid))
            os.chmod(socket_path, 0o600)
            config = await self._config(docker, socket_path)
            self.container_id = cid = await docker.create(config)
            ownership.register(cid, self.socket_dir)
            self._exit = asyncio.ensure_future(docker.wait_exit(cid))
            await asyncio.sleep(0)  # let the wait reach the engine before the start
            await docker.start(cid)
            self._follower = asyncio.ensure_future(self._follow(docker, cid))
            log.info("sandbox %s started from %s for %s", cid[:12], self.image, self.source)
            conn = await self._await_server(listener, timeout)
            sock = conn._p.transport.get_extra_info("socket") if conn._p.transport is not None else None
            if sock is not None:
                ownership.set_connection_fd(cid, sock.fileno())
            return conn
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close()
            raise
        finally:
            if listener is not None:
                listener.close()

    async def _await_server(self, listener: Any, timeout: float | None) -> ClientConnection:
        assert self._exit is not None and self.container_id is not None
        accept = asyncio.ensure_future(listener.accept())
        try:
            with anyio.fail_after(timeout):
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
                raise cls(
                    f"the env for {self.source} could not be made in its sandbox: "
                    f"{failure.remote_type.rpartition('.')[2]}: {failure.remote_message}",
                    container_id=self.container_id, exit_code=code, logs=self.logs,
                ) from failure
            if not self._exit.done():
                raise failure
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
                    self._lines.extend(line[:LOG_LINE_CHARS] for line in lines)
                    partial = partial[-LOG_LINE_CHARS:]
        if partial:
            self._lines.append(partial[:LOG_LINE_CHARS])

    async def _drain_output(self) -> None:
        # The output stream ends when the container exits; let it deliver its last lines.
        if self._follower is not None and not self._follower.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(self._follower)

    async def exit_status(self, wait: float = 2.0) -> tuple[int | None, bool | None]:
        """``(exit code, killed for lack of memory)`` once the container exited (None if unknown).

        The memory flag comes from the engine when the container is still there; once the engine
        removed it, a SIGKILL (137) under the memory limit counts as out of memory.
        """
        if self._exit is None or self._docker is None or self.container_id is None:
            return None, None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await asyncio.shield(self._exit)
        code = self._exit_code()
        if code is None:
            return None, None
        state = await self._docker.state(self.container_id)
        await self._drain_output()
        if "OOMKilled" in state:
            return code, bool(state["OOMKilled"])
        return code, code == 137

    async def close(self, grace: float = 2.0) -> None:
        """Stop and remove the container and the socket directory; waits until it is gone. Idempotent."""
        docker, self._docker = self._docker, None
        cid, self.container_id = self.container_id, None
        try:
            if cid is not None and docker is not None:
                await docker.remove(cid, grace=grace)
                await _gone(docker, cid)
                log.info("sandbox %s removed", cid[:12])
        finally:
            if cid is not None:
                ownership.unregister(cid)
            for task in (self._follower, self._exit):
                if task is not None and not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            if self.socket_dir is not None:
                shutil.rmtree(self.socket_dir, ignore_errors=True)
                self.socket_dir = None
            if docker is not None:
                await release_docker(docker)


async def _gone(docker: DockerClient, cid: str) -> None:
    # An AutoRemove container may still be in removal when `remove` returns (409): wait for it.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(REMOVAL_TIMEOUT):
            while await docker.state(cid):
                await asyncio.sleep(0.05)


_RUNSC_HELP = """To use gVisor, install it (Debian: `apt-get install runsc`) and register it in
/etc/docker/daemon.json, then restart dockerd:

    {"runtimes": {"runsc": {"path": "/usr/bin/runsc",
                            "runtimeArgs": ["--network=none", "--platform=ptrace", "--host-uds=all"]}}}

(`scripts/dev setup` does this on the project's machines.)"""
