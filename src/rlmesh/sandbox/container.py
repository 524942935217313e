"""Sandbox containers: start, readiness, and removal that leaves nothing behind.

The server inside listens on a Unix socket in a private (0700) host directory
that is bind-mounted into the container, so no port is published. Readiness is
event-driven: the container's output is followed until the server's readiness
line, raced against the container exiting. Every live sandbox is recorded so
that ``close()``, interpreter exit, and the reaper of dead owners can remove it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import shutil
import socket
import stat
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..errors import (
    DockerUnavailableError,
    InvalidArgumentError,
    RLMeshTimeoutError,
    SandboxError,
    SandboxStartError,
)
from ..protocol import READY_LINE_PREFIX
from ._docker import DockerClient, acquire_docker, docker_client, release_docker

__all__ = ["ContainerOptions", "Sandbox", "cleanup_sandboxes", "list_sandboxes"]

log = logging.getLogger("rlmesh.sandbox")

LABEL = "rlmesh.sandbox"
LABEL_OWNER = "rlmesh.owner"
LABEL_SESSION = "rlmesh.session"
LABEL_SOURCE = "rlmesh.source"
LABEL_SOCKET_DIR = "rlmesh.socket-dir"
SOCKET_DIR_IN_CONTAINER = "/rlmesh"
SOCKET_NAME = "env.sock"
TMPFS_SIZE = "1g"  # /tmp in the container; bounded so a runaway env cannot eat host memory
SOCKET_DIR_PREFIX = "rlmesh-sbx-"  # then the owner's pid, so a leak check can tell whose it is
UNPRIVILEGED_UID = 65534

SESSION = uuid.uuid4().hex[:12]


def _process_start_ticks(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


OWNER = f"{socket.gethostname()}:{os.getpid()}:{_process_start_ticks(os.getpid())}"


@dataclass(frozen=True)
class ContainerOptions:
    """How a sandbox container runs. Every field is validated on construction.

    Attributes:
        network: Give the container a network (off by default).
        memory: Memory limit, bytes or a string like ``"2g"``.
        cpus: CPU limit, as a number of CPUs.
        pids_limit: Maximum number of processes.
        env: Extra environment variables.
        gpus: ``"all"``, a GPU count, or a list of GPU ids/UUIDs (needs the NVIDIA runtime).
        devices: Host devices, ``"/dev/x"`` or ``"/dev/x:/dev/y[:rwm]"``.
        volumes: Extra bind mounts, ``{host_path: container_path}`` or ``"host:container[:ro|rw]"``.
        user: ``"uid[:gid]"`` to run as; never root. Default: the host user, or 65534 for root.
    """

    network: bool = False
    memory: int | str | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    gpus: str | int | Sequence[str] | None = None
    devices: Sequence[str] = ()
    volumes: Mapping[str, str] | Sequence[str] = ()
    user: str | int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.network, bool):
            raise InvalidArgumentError(f"network must be True or False, got {self.network!r}")
        if self.memory is not None:
            _memory_bytes(self.memory)
        if self.cpus is not None and (isinstance(self.cpus, bool) or not isinstance(self.cpus, (int, float)) or self.cpus <= 0):
            raise InvalidArgumentError(f"cpus must be a positive number, got {self.cpus!r}")
        if self.pids_limit is not None and (isinstance(self.pids_limit, bool) or not isinstance(self.pids_limit, int) or self.pids_limit < 1):
            raise InvalidArgumentError(f"pids_limit must be a positive int, got {self.pids_limit!r}")
        if not isinstance(self.env, Mapping) or not all(
            isinstance(k, str) and k and "=" not in k and isinstance(v, str) for k, v in self.env.items()
        ):
            raise InvalidArgumentError(f"env must map variable names to str values, got {self.env!r}")
        self.device_requests()
        self.device_mappings()
        self.binds()
        self.run_as()

    def device_requests(self) -> list[dict[str, Any]]:
        """Docker ``DeviceRequests`` for ``gpus``."""
        gpus = self.gpus
        if gpus is None:
            return []
        if gpus == "all":
            return [{"Driver": "", "Count": -1, "Capabilities": [["gpu"]]}]
        if isinstance(gpus, int) and not isinstance(gpus, bool) and gpus > 0:
            return [{"Driver": "", "Count": gpus, "Capabilities": [["gpu"]]}]
        if not isinstance(gpus, (str, bytes)) and isinstance(gpus, Sequence) and gpus and all(
            isinstance(g, str) and g.strip() for g in gpus
        ):
            return [{"Driver": "", "DeviceIDs": list(gpus), "Capabilities": [["gpu"]]}]
        raise InvalidArgumentError(f"gpus must be 'all', a positive count or a list of GPU ids, got {gpus!r}")

    def device_mappings(self) -> list[dict[str, str]]:
        """Docker ``Devices`` for ``devices``."""
        if isinstance(self.devices, str):
            raise InvalidArgumentError(f"devices must be a list, e.g. devices=[{self.devices!r}]")
        out = []
        for spec in self.devices:
            parts = spec.split(":") if isinstance(spec, str) else []
            if not 1 <= len(parts) <= 3 or not all(p.startswith("/") for p in parts[:2]):
                raise InvalidArgumentError(f"device {spec!r} must be '/dev/x' or '/dev/x:/dev/y[:rwm]'")
            if not os.path.exists(parts[0]):
                raise InvalidArgumentError(f"device {parts[0]} does not exist on this host")
            perms = parts[2] if len(parts) == 3 else "rwm"
            if not perms or set(perms) - set("rwm"):
                raise InvalidArgumentError(f"device permissions in {spec!r} must be made of r, w, m")
            out.append({"PathOnHost": parts[0], "PathInContainer": parts[1] if len(parts) > 1 else parts[0],
                        "CgroupPermissions": perms})
        return out

    def binds(self) -> list[str]:
        """Docker ``Binds`` for ``volumes`` (the socket directory is added separately)."""
        vols = self.volumes
        if isinstance(vols, str):
            raise InvalidArgumentError(f"volumes must be a list or a mapping, e.g. volumes=[{vols!r}]")
        items = [f"{h}:{c}" for h, c in vols.items()] if isinstance(vols, Mapping) else list(vols)
        out = []
        for spec in items:
            parts = spec.split(":") if isinstance(spec, str) else []
            if len(parts) not in (2, 3) or not all(p.startswith("/") for p in parts[:2]):
                raise InvalidArgumentError(f"volume {spec!r} must be '/host/path:/container/path[:ro|rw]'")
            if len(parts) == 3 and parts[2] not in ("ro", "rw"):
                raise InvalidArgumentError(f"volume mode in {spec!r} must be ro or rw")
            if not os.path.exists(parts[0]):
                raise InvalidArgumentError(f"volume source {parts[0]} does not exist on this host")
            if parts[1].rstrip("/") in ("", SOCKET_DIR_IN_CONTAINER):
                raise InvalidArgumentError(f"volume target {parts[1]} is reserved")
            out.append(spec)
        return out

    def run_as(self) -> str:
        """The ``uid:gid`` the container runs as (never root)."""
        if self.user is None:
            uid, gid = _container_user()
            return f"{uid}:{gid}"
        text = str(self.user)
        uid_text, _, gid_text = text.partition(":")
        if not uid_text.isdigit() or (gid_text and not gid_text.isdigit()):
            raise InvalidArgumentError(f"user must be 'uid' or 'uid:gid' (numbers), got {self.user!r}")
        if int(uid_text) == 0:
            raise InvalidArgumentError("rlmesh never runs a sandbox as root (uid 0); pick another user")
        if os.getuid() != 0 and int(uid_text) != os.getuid():
            # The private socket directory is the host user's (0700); only root can hand it over.
            raise InvalidArgumentError(
                f"user={self.user!r}: as uid {os.getuid()}, rlmesh can run sandboxes only as that uid "
                "(the socket directory is private to it); run as root to choose another user"
            )
        return text if gid_text else f"{uid_text}:{uid_text}"


def _memory_bytes(value: int | str) -> int:
    units = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        text = value.strip().lower().removesuffix("ib").removesuffix("b") or "x"
        unit = text[-1] if text[-1] in units else ""
        number = text[: -1] if unit else text
        with contextlib.suppress(ValueError):
            if float(number) > 0:
                return int(float(number) * units[unit])
    raise InvalidArgumentError(f"memory must be a positive number of bytes or a string like '2g', got {value!r}")


def _container_user() -> tuple[int, int]:
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        return UNPRIVILEGED_UID, UNPRIVILEGED_UID
    return uid, gid


# Live sandboxes of this process: container id -> socket dir (for exit-time cleanup).
_live: dict[str, str] = {}
_atexit_registered = False


class Sandbox:
    """One container serving one env over a Unix socket in a private host directory.

    Args:
        image: The image tag to run.
        command: The container command without ``--address`` (for a prebuilt image, the
            arguments appended to its ENTRYPOINT).
        options: Container options.
        source: The env source (recorded in a label, for ``rlmesh sandbox ls``).
    """

    def __init__(self, image: str, command: list[str], options: ContainerOptions, source: str) -> None:
        self.image = image
        self.command = command
        self.options = options
        self.source = source
        self.container_id: str | None = None
        self.socket_dir: str | None = None
        self._docker: DockerClient | None = None

    @property
    def address(self) -> str:
        """The host-side address of the server's socket."""
        assert self.socket_dir is not None
        return f"unix://{os.path.join(self.socket_dir, SOCKET_NAME)}"

    def _config(self) -> dict[str, Any]:
        opts = self.options
        host: dict[str, Any] = {
            "Binds": [f"{self.socket_dir}:{SOCKET_DIR_IN_CONTAINER}:rw", *opts.binds()],
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "ReadonlyRootfs": True,
            "Tmpfs": {"/tmp": f"rw,nosuid,nodev,mode=1777,size={TMPFS_SIZE}"},
            "NetworkMode": "bridge" if opts.network else "none",
        }
        if opts.memory is not None:
            host["Memory"] = _memory_bytes(opts.memory)
        if opts.cpus is not None:
            host["NanoCpus"] = int(opts.cpus * 1e9)
        if opts.pids_limit is not None:
            host["PidsLimit"] = opts.pids_limit
        if opts.gpus is not None:
            host["DeviceRequests"] = opts.device_requests()
        if opts.devices:
            host["Devices"] = opts.device_mappings()
        env = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "HOME": "/tmp", **opts.env}
        return {
            "Image": self.image,
            "Cmd": [*self.command, "--address", f"unix://{SOCKET_DIR_IN_CONTAINER}/{SOCKET_NAME}"],
            "User": opts.run_as(),
            "Env": [f"{k}={v}" for k, v in env.items()],
            "Labels": {
                LABEL: "1", LABEL_OWNER: OWNER, LABEL_SESSION: SESSION,
                LABEL_SOURCE: self.source[:200], LABEL_SOCKET_DIR: self.socket_dir or "",
            },
            "NetworkDisabled": not opts.network,
            "HostConfig": host,
        }

    async def start(self, timeout: float | None) -> str:
        """Start the container and wait until its server accepts connections.

        Returns:
            The address to connect to.

        Raises:
            SandboxStartError: The container exited before it was ready.
            RLMeshTimeoutError: It was not ready within ``timeout`` seconds.
        """
        global _atexit_registered
        self._docker = docker = await acquire_docker()
        try:
            await _reap_dead_owners_once(docker)
            self.socket_dir = tempfile.mkdtemp(prefix=f"{SOCKET_DIR_PREFIX}{os.getpid()}-", dir=os.environ.get("RLMESH_RUNTIME_DIR"))
            os.chmod(self.socket_dir, 0o700)
            if os.getuid() == 0:  # the unprivileged container user must reach the socket dir
                uid, _, gid = self.options.run_as().partition(":")
                os.chown(self.socket_dir, int(uid), int(gid))
            self.container_id = await docker.run(self._config())
            _live[self.container_id] = self.socket_dir
            if not _atexit_registered:
                atexit.register(_remove_leftovers_at_exit)
                _atexit_registered = True
            log.info("sandbox %s started from %s for %s", self.container_id[:12], self.image, self.source)
            await self._wait_ready(docker, self.container_id, timeout)
            sock = os.path.join(self.socket_dir, SOCKET_NAME)
            if not stat.S_ISSOCK(os.lstat(sock).st_mode):
                # The directory is writable from inside; never follow what the env put there.
                raise SandboxStartError(
                    f"{sock} is not a socket; the sandbox for {self.source} replaced it",
                    container_id=self.container_id, logs=await docker.logs(self.container_id),
                )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close()
            raise
        return self.address

    async def _wait_ready(self, docker: DockerClient, cid: str, timeout: float | None) -> None:
        # The followed output ends when the container exits, so one stream tells both
        # "ready" and "exited"; no request is left in flight to cancel.
        try:
            with anyio.fail_after(timeout):
                seen = ""
                stream = docker.follow_logs(cid)
                async with contextlib.aclosing(stream):
                    async for chunk in stream:
                        seen = (seen + chunk)[-4096:]
                        if READY_LINE_PREFIX in seen:
                            return
                exit_code = await docker.wait(cid)
        except TimeoutError as exc:
            raise RLMeshTimeoutError(
                f"sandbox {cid[:12]} for {self.source} was not ready within connect_timeout={timeout}s; "
                f"last output:\n{await docker.logs(cid)}"
            ) from exc
        except DockerUnavailableError:
            raise
        except SandboxError as exc:
            raise SandboxStartError(
                f"sandbox container for {self.source} could not be watched while starting ({exc}); "
                "was it removed from outside, e.g. by `rlmesh sandbox cleanup --all`?",
                container_id=cid, logs=await docker.logs(cid),
            ) from exc
        raise SandboxStartError(
            f"sandbox container for {self.source} exited before its server was ready",
            container_id=cid, exit_code=exit_code, logs=await docker.logs(cid),
        )

    async def close(self) -> None:
        """Stop and remove the container and the socket directory. Idempotent."""
        docker, self._docker = self._docker, None
        cid, self.container_id = self.container_id, None
        try:
            if cid is not None and docker is not None:
                await docker.remove(cid)
                _live.pop(cid, None)
                log.info("sandbox %s removed", cid[:12])
        finally:
            if self.socket_dir is not None:
                shutil.rmtree(self.socket_dir, ignore_errors=True)
                self.socket_dir = None
            if docker is not None:
                await release_docker(docker)


def _owner_alive(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid_text, _, ticks = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return True  # not ours to judge
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _process_start_ticks(pid) == ticks


_reaped = False


async def _reap_dead_owners_once(docker: DockerClient) -> None:
    global _reaped
    if _reaped:
        return
    _reaped = True
    try:
        removed = await _reap(docker, only_dead=True)
    except SandboxError as exc:  # someone else's leftovers must not stop this start
        log.warning("could not remove sandboxes left by dead processes: %s", exc)
        return
    if removed:
        log.warning("removed %d sandbox container(s) left behind by dead processes", len(removed))


async def _reap(docker: DockerClient, *, only_dead: bool) -> list[str]:
    removed = []
    for info in await docker.list_containers({LABEL: "1"}):
        labels = info.get("Labels") or {}
        if only_dead and _owner_alive(labels.get(LABEL_OWNER, "")):
            continue
        await docker.remove(info["Id"], grace=0)
        sock_dir = labels.get(LABEL_SOCKET_DIR)
        if sock_dir and os.path.basename(sock_dir).startswith(SOCKET_DIR_PREFIX):
            shutil.rmtree(sock_dir, ignore_errors=True)
        removed.append(str(info["Id"]))
    return removed


async def list_sandboxes() -> list[dict[str, Any]]:
    """Live sandbox containers on this engine: id, state, source, owner and whether the owner is alive."""
    async with docker_client() as docker:
        rows = []
        for info in await docker.list_containers({LABEL: "1"}):
            labels = info.get("Labels") or {}
            owner = labels.get(LABEL_OWNER, "")
            rows.append({
                "id": str(info["Id"])[:12], "image": info.get("Image", ""), "state": info.get("State", ""),
                "status": info.get("Status", ""), "source": labels.get(LABEL_SOURCE, ""),
                "owner": owner, "owner_alive": _owner_alive(owner), "created": info.get("Created", 0),
            })
        return rows


async def cleanup_sandboxes(*, all_owners: bool = False) -> list[str]:
    """Remove sandboxes whose owner process died (or every sandbox, with ``all_owners``)."""
    async with docker_client() as docker:
        return await _reap(docker, only_dead=not all_owners)


def _remove_leftovers_at_exit() -> None:
    if not _live:
        return
    leftovers = dict(_live)

    async def remove_all() -> None:
        async with docker_client() as docker:
            await asyncio.gather(*(docker.remove(cid, grace=0) for cid in leftovers), return_exceptions=True)

    started = time.monotonic()
    try:
        asyncio.run(remove_all())
    except Exception as exc:  # noqa: BLE001  (exit-time cleanup reports, never raises)
        log.warning("could not remove sandbox containers at exit: %s; run `rlmesh sandbox cleanup`", exc)
    for sock_dir in leftovers.values():
        shutil.rmtree(sock_dir, ignore_errors=True)
    _live.clear()
    log.debug("removed %d sandbox(es) at exit in %.2fs", len(leftovers), time.monotonic() - started)
