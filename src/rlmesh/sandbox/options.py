"""Container options: what a sandbox may use, validated, with safe defaults.

Every option is checked when the sandbox object is made, before anything is built or
started. The defaults are for untrusted code (see the README's security table): a pids
limit, a memory limit (a quarter of the engine's memory, at least 1 GiB), no swap, a
finite request timeout, no network, and no writable host directory.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._checks import is_int, is_number
from ..errors import InvalidArgumentError

__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_PIDS_LIMIT",
    "DEFAULT_REQUEST_TIMEOUT",
    "MIN_MEMORY",
    "RUNTIME_DIR_IN_CONTAINER",
    "UNPRIVILEGED_UID",
    "ContainerOptions",
    "default_memory",
    "memory_bytes",
]

DEFAULT_PIDS_LIMIT = 1024
"""Processes (and threads) a sandbox may have: room for async vector envs, not for a fork bomb."""
DEFAULT_REQUEST_TIMEOUT = 300.0
"""Seconds a sandbox reply may take by default: long enough for slow simulators' resets."""
DEFAULT_LEASE = 60.0
"""Seconds a sandbox's server waits to reach its owner before it gives up and exits."""
DEFAULT_MEMORY_FRACTION = 0.25
MIN_MEMORY = 6 << 20  # Docker refuses less
MIN_DEFAULT_MEMORY = 1 << 30
RUNTIME_DIR_IN_CONTAINER = "/rlmesh"
UNPRIVILEGED_UID = 65534
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
# Paths that give whoever can write them control of a container engine.
_ENGINE_SOCKETS = ("docker.sock", "containerd.sock", "podman.sock", "crio.sock", "dockershim.sock")


def default_memory(engine_memory: int) -> int:
    """The default memory limit for an engine with ``engine_memory`` bytes."""
    return max(MIN_DEFAULT_MEMORY, int(engine_memory * DEFAULT_MEMORY_FRACTION) >> 20 << 20)  # whole MiB


def memory_bytes(value: Any) -> int:
    """Parse a memory size: a positive int of bytes, or ``"512m"``, ``"2g"``, ``"1.5GiB"``.

    Raises:
        InvalidArgumentError: Anything else, or less than 6 MiB (Docker's minimum).
    """
    number: float | None = None
    if is_int(value):
        number = value
    elif isinstance(value, str):
        m = _MEMORY.match(value)
        if m:
            number = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if number is None or not math.isfinite(number) or number < MIN_MEMORY:
        raise InvalidArgumentError(
            f"memory must be a number of bytes or a size like '512m' or '2g', of at least 6 MiB "
            f"(Docker's minimum), got {value!r}"
        )
    return int(number)


def engine_socket_paths() -> list[str]:
    """Paths of this machine's container engine sockets (they must never be mounted)."""
    paths = ["/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock",
             "/var/run/containerd/containerd.sock", "/run/podman/podman.sock"]
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        paths.append(host.removeprefix("unix://"))
    return [os.path.realpath(p) for p in paths]


def _exposes_engine(path: str) -> bool:
    real = os.path.realpath(path)
    if os.path.basename(real) in _ENGINE_SOCKETS:
        return True
    for sock in engine_socket_paths():
        if real == sock or (os.path.isdir(real) and os.path.commonpath([real, sock]) == real and os.path.exists(sock)):
            return True
    return False


@dataclass(frozen=True)
class ContainerOptions:
    """How a sandbox container runs. Every field is validated on construction.

    Attributes:
        network: Give the container a network (off by default).
        memory: Memory limit, bytes or a string like ``"2g"`` (default: a quarter of the engine's
            memory, at least 1 GiB; swap is off).
        cpus: CPU limit, as a number of CPUs.
        pids_limit: Maximum number of processes and threads (default 1024).
        env: Extra environment variables.
        gpus: ``"all"``, a GPU count, or a list of GPU ids/UUIDs (needs the NVIDIA runtime).
        devices: Host devices, ``"/dev/x"`` or ``"/dev/x:/dev/y[:rwm]"``.
        volumes: Extra bind mounts, ``{host_path: container_path}`` or ``"host:container[:ro|rw]"``.
        user: ``"uid[:gid]"`` to run as; never root, never group 0. Default: the host user, or
            65534 for root.
        allow_engine_socket: Allow a volume that exposes the container engine's socket (which
            gives the env full control of the engine). Off, such a volume is refused.
        runtime: The container runtime (``runc``, ``runsc`` for gVisor, or another name the
            engine has); None uses the engine's default.
    """

    network: bool = False
    memory: int | str | None = None  # None: the default, a quarter of the engine's memory
    cpus: float | None = None
    pids_limit: int | None = DEFAULT_PIDS_LIMIT
    env: Mapping[str, str] = field(default_factory=dict)
    gpus: str | int | Sequence[str] | None = None
    devices: Sequence[str] = ()
    volumes: Mapping[str, str] | Sequence[str] = ()
    user: str | int | None = None
    allow_engine_socket: bool = False
    runtime: str | None = None

    def __post_init__(self) -> None:
        if self.memory is not None:
            memory_bytes(self.memory)
        for name in ("network", "allow_engine_socket"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgumentError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.runtime is not None and (not isinstance(self.runtime, str) or not re.match(r"^[\w.-]{1,64}$", self.runtime)):
            raise InvalidArgumentError(f"runtime must be a runtime name such as 'runc' or 'runsc', got {self.runtime!r}")
        if self.cpus is not None and (not is_number(self.cpus) or self.cpus <= 0):
            raise InvalidArgumentError(f"cpus must be a positive number, got {self.cpus!r}")
        if self.pids_limit is not None and (not is_int(self.pids_limit) or self.pids_limit < 1):
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
        if is_int(gpus) and gpus > 0:
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
            if parts[1].rstrip("/") in ("", RUNTIME_DIR_IN_CONTAINER) or parts[1].startswith(RUNTIME_DIR_IN_CONTAINER + "/"):
                raise InvalidArgumentError(f"volume target {parts[1]} is reserved")
            if not self.allow_engine_socket and _exposes_engine(parts[0]):
                raise InvalidArgumentError(
                    f"volume {spec!r} exposes the container engine's socket, which gives the env full control "
                    "of the engine (and so of this machine); pass allow_engine_socket=True only if you mean it"
                )
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
        if gid_text and int(gid_text) == 0:
            raise InvalidArgumentError(f"user={self.user!r}: rlmesh never runs a sandbox in the root group (gid 0)")
        if os.getuid() != 0 and int(uid_text) != os.getuid():
            # The socket the sandbox dials is the host user's (0600); only root can hand it over.
            raise InvalidArgumentError(
                f"user={self.user!r}: as uid {os.getuid()}, rlmesh can run sandboxes only as that uid "
                "(the socket directory is private to it); run as root to choose another user"
            )
        return text if gid_text else f"{uid_text}:{uid_text}"


def _container_user() -> tuple[int, int]:
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        return UNPRIVILEGED_UID, UNPRIVILEGED_UID
    return uid, gid
