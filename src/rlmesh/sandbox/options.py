"""Sandbox options: one model, :class:`SandboxOptions`, from which everything about them comes.

Each option is a field, declared once with its default and its documentation. From the fields
come the validation (each check written once, in ``__post_init__``), the defaults, what
``env.spec`` records (:meth:`SandboxOptions.spec_kwargs`), the typo hints (:data:`OPTION_NAMES`),
the options handed on to the client (:data:`CLIENT_OPTIONS`) and the ``Args:`` of the sandbox
classes' docstrings (:func:`options_doc`). :class:`ContainerOptions` is the part that says how the
container runs; a :class:`SandboxOptions` is one, so the container layer takes either.

Every option is checked when the sandbox object is made, before anything is built or
started. The defaults are for untrusted code (see the README's security table): a pids
limit, a memory limit (a quarter of the engine's memory, at least 1 GiB), no swap, a
finite request timeout, no network, and no writable host directory.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from .._checks import is_int, is_number
from ..errors import InvalidArgumentError
from ..protocol import DEFAULT_MAX_FRAME_SIZE
from ..protocol.bounds import DEFAULT_MAX_INFO_SIZE, DEFAULT_MAX_VARIABLE_SIZE
from ..protocol.data_plane import DEFAULT_MAX_REGION_SIZE
from ..protocol.options import FACTORY_PATTERN
from .progress import ProgressOption, check_progress

__all__ = [
    "BUILD_OPTIONS",
    "CLIENT_OPTIONS",
    "DEFAULT_LEASE",
    "DEFAULT_PIDS_LIMIT",
    "GL_PRESETS",
    "DEFAULT_REQUEST_TIMEOUT",
    "MIN_MEMORY",
    "OPTION_NAMES",
    "RUNTIME_DIR_IN_CONTAINER",
    "UNPRIVILEGED_UID",
    "ContainerOptions",
    "SandboxOptions",
    "check_library_patterns",
    "check_system_packages",
    "default_memory",
    "listed_system_packages",
    "memory_bytes",
    "option_default",
    "option_fields",
    "options_doc",
    "wrappers_wire_form",
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
_DEBIAN_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]{1,100}(?:=[A-Za-z0-9.+:~-]{1,100})?$")
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


def _option(default: Any = None, doc: str = "", *, group: str, spec: bool = True, factory: Any = None) -> Any:
    """A field of an options model: its default, its documentation, its group, and whether
    ``env.spec`` records it."""
    metadata = {"doc": doc, "group": group, "spec": spec}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ContainerOptions:
    """How a sandbox container runs. Every field is validated on construction."""

    network: bool = _option(False, "Give the container a network (off by default).", group="container")
    memory: int | str | None = _option(
        None, "Memory limit (bytes or ``\"2g\"``; default a quarter of the engine's memory, at least 1 GiB; "
        "no swap).", group="container")
    cpus: float | None = _option(None, "CPU limit, as a number of CPUs.", group="container")
    pids_limit: int | None = _option(DEFAULT_PIDS_LIMIT, "Process and thread limit (default 1024; None for none).",
                                     group="container")
    env: Mapping[str, str] = _option(doc="Extra environment variables for the container.", group="container",
                                     factory=dict)
    gpus: str | int | Sequence[str] | None = _option(
        None, "``\"all\"``, a count, or GPU ids (needs the NVIDIA container runtime).", group="container")
    devices: Sequence[str] = _option((), "Host devices to expose (``\"/dev/x[:/dev/y[:rwm]]\"``).", group="container")
    volumes: Mapping[str, str] | Sequence[str] = _option(
        (), "Extra bind mounts (``{host: container}`` or ``\"host:container[:ro]\"``).", group="container")
    user: str | int | None = _option(
        None, "``\"uid[:gid]\"`` to run as (never root, never group 0; default: the host user, or 65534 for "
        "root).", group="container")
    allow_engine_socket: bool = _option(
        False, "Allow a volume that exposes the container engine's socket (which gives the env full control of "
        "the engine); off, such a volume is refused.", group="container")
    runtime: str | None = _option(
        None, "Container runtime: ``\"runc\"``, ``\"runsc\"`` (gVisor), or another the engine has; None uses "
        "the engine's default.", group="container")

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


GL_PRESETS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    # Headless rendering without a GPU: EGL through Mesa's software driver (llvmpipe), libglvnd's
    # dispatch libraries, and the variables MuJoCo and PyOpenGL read.
    "egl": (("libegl1", "libopengl0", "libgl1-mesa-dri"), {"MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl"}),
    "osmesa": (("libosmesa6", "libgl1"), {"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa"}),
}
"""``gl=`` presets: the Debian packages they install and the environment variables they set."""


def listed_system_packages(packages: object, gl: str | None) -> tuple[str, ...]:
    """The Debian packages a sandbox lists: its ``system_packages`` and its ``gl`` preset's."""
    return (*check_system_packages(packages), *(GL_PRESETS[gl][0] if gl in GL_PRESETS else ()))


def check_system_packages(packages: object) -> tuple[str, ...]:
    """``system_packages=``: ``"auto"``, or Debian package names (``name`` or ``name=version``);
    returns the names listed (none for ``"auto"``, which every list includes).

    Raises:
        InvalidArgumentError: Neither.
    """
    if packages == "auto":
        return ()
    if isinstance(packages, (str, bytes)) or not isinstance(packages, Sequence):
        raise InvalidArgumentError(f"system_packages must be 'auto' or a list, e.g. system_packages=[{packages!r}]")
    for name in packages:
        if not isinstance(name, str) or not _DEBIAN_NAME.match(name):
            raise InvalidArgumentError(f"system_packages: {name!r} is not a Debian package name")
    return tuple(name for name in packages if name != "auto")


def check_library_patterns(patterns: object) -> tuple[str, ...]:
    """``ignore_libraries=``: library names or shell patterns.

    Raises:
        InvalidArgumentError: Not a list of such.
    """
    if isinstance(patterns, (str, bytes)) or not isinstance(patterns, Sequence) or not all(
        isinstance(p, str) and re.fullmatch(r"[\w.+*?\[\]-]{1,200}", p) for p in patterns
    ):
        raise InvalidArgumentError(
            f"ignore_libraries must be a list of library names or patterns, e.g. ['libcuda.so.1'], got {patterns!r}")
    return tuple(patterns)


def wrappers_wire_form(wrappers: Any) -> list[list[Any]]:
    """``wrappers=`` in its wire form, ``[["module:Class", {kwargs}], ...]``, checked for form only.

    Raises:
        InvalidArgumentError: Not a list of ``"module:Class"`` or ``("module:Class", {kwargs})``.
    """
    if isinstance(wrappers, (str, bytes)) or not isinstance(wrappers, Sequence):
        raise InvalidArgumentError(f"wrappers must be a list, e.g. wrappers=[{wrappers!r}]")
    out: list[list[Any]] = []
    for item in wrappers:
        path: Any = None
        kwargs: Any = {}
        if isinstance(item, str):
            path = item
        elif isinstance(item, (tuple, list)) and len(item) in (1, 2):
            path, kwargs = (item[0], item[1] if len(item) == 2 else {})
        if not isinstance(path, str) or not FACTORY_PATTERN.match(path) or not isinstance(kwargs, Mapping):
            raise InvalidArgumentError(
                f"each wrapper is 'module:Class' or ('module:Class', {{kwargs}}), got {item!r}"
            )
        try:
            orjson.dumps(dict(kwargs))
        except TypeError as exc:
            raise InvalidArgumentError(f"the kwargs of wrapper {path!r} must be JSON-serialisable: {exc}") from exc
        out.append([path, dict(kwargs)])
    return out


@dataclass(frozen=True)
class SandboxOptions(ContainerOptions):
    """Every option of a sandbox: the container's (:class:`ContainerOptions`), the image build's,
    the source's, the engine's and the client's. Every field is validated on construction
    (the client's by the client, and the engine's by :meth:`~rlmesh.sandbox.engine.Engine.choose`)."""

    packages: Sequence[str] = _option((), "pip requirements, local wheels or project dirs installed in the image.",
                                      group="build")
    imports: Sequence[str] = _option((), "Modules checked at build time and again at start.", group="image")
    system_packages: str | Sequence[str] = _option(
        "auto", "Debian packages installed in the image (resolved and downloaded on the host with its apt, installed "
        "offline). ``\"auto\"`` (the default) installs those that ship the shared libraries the installed wheels "
        "need and the base image lacks; a list adds its packages to those.", group="build")
    ignore_libraries: Sequence[str] = _option(
        (), "Shared libraries (names or patterns, ``[\"libcuda.so.*\"]``) that ``system_packages`` leaves out: "
        "ones nothing loads at run time. ``[\"*\"]`` finds none.", group="build")
    gl: str | None = _option(
        None, "Headless OpenGL: ``\"egl\"`` or ``\"osmesa\"`` installs Mesa's software renderer for it and sets "
        "``MUJOCO_GL`` and ``PYOPENGL_PLATFORM``; None (default) installs nothing for it.", group="build")
    base_image: str | None = _option(
        None, "The base image (default ``python:X.Y-slim``, or ``RLMESH_BASE_IMAGE``).", group="build")
    rebuild: bool = _option(False, "Build the image even if it exists.", group="build")
    trust_remote_code: bool = _option(False, "Required for ``hf://`` sources.", group="source")
    allow_unpinned_hf: bool = _option(False, "Allow an ``hf://`` revision that is not a full commit SHA.",
                                      group="source")
    docker_host: str | None = _option(
        None, "The Docker engine (``tcp://HOST:PORT``, with TLS from ``DOCKER_TLS_VERIFY`` and ``DOCKER_CERT_PATH`` "
        "as for the Docker CLI); default ``DOCKER_HOST``, else this machine's. The image is built there. An engine "
        "on another machine is reached through a relay.", group="engine")
    transport: str | None = _option(
        None, "``\"unix\"`` (a socket the sandbox dials; this machine's engine only) or ``\"tcp\"`` (a relay "
        "container publishing one port, with a fresh token); default: ``unix`` for this machine's engine, ``tcp`` "
        "for others.", group="engine")
    lease: float = _option(
        DEFAULT_LEASE, "Seconds the server inside may wait for its owner's connection (default 60). Once connected, "
        "a sandbox ends with its owner: when the owner's process ends, however it ends (SIGKILL included), the "
        "server sees its connection close and exits, and the engine removes the container.", group="sandbox")
    connect_timeout: float | None = _option(60.0, "Seconds allowed from the start (the engine creating and starting the container included; the image build not) to a connected env: a deadline.",
                                            group="client")
    request_timeout: float | None = _option(
        DEFAULT_REQUEST_TIMEOUT, "Seconds allowed for each reply (default 300); None waits forever.", group="client")
    max_frame_size: int = _option(DEFAULT_MAX_FRAME_SIZE, "The largest frame either side accepts (bytes, at least "
                                  "64 KiB).", group="client")
    strict_actions: bool = _option(False, "Check actions against the action space on the host before sending them.",
                                   group="client")
    data_plane: str = _option(
        "auto", "``\"auto\"``: observations, rewards and flags cross in shared memory the host creates (a sealed "
        "memfd) where the server can map it (a Unix-socket sandbox under runc), else the socket; ``\"socket\"``: "
        "always the socket. The path chosen is logged once.", group="client")
    max_region_size: int = _option(
        DEFAULT_MAX_REGION_SIZE, "The largest shared region the host creates for the data plane (bytes, 64 MiB): the "
        "host pays for it, outside the sandbox's memory limit, so a larger layout uses the socket.", group="client")
    max_info_size: int = _option(
        DEFAULT_MAX_INFO_SIZE, "Bytes a STEP or RESET reply may spend on its info dict (part of the reply bound).",
        group="client")
    max_variable_size: int = _option(
        DEFAULT_MAX_VARIABLE_SIZE, "Bytes a reply may spend on variable-size leaves (Text, Sequence, Graph, custom "
        "spaces).", group="client")
    progress: ProgressOption = _option(
        None, "Image build progress: None (a status line when stderr is a terminal, else log records), True, False "
        "(log records only), or a callable taking ``BuildProgress``.", group="sandbox", spec=False)
    wrappers: Sequence[str | tuple[str, Mapping[str, Any]] | list[Any]] = _option(
        (), "Gymnasium wrappers applied inside the sandbox, in order, before the spaces are described: "
        "``\"module:Class\"`` or ``(\"module:Class\", {kwargs})``. Not part of the image.", group="sandbox")

    def __post_init__(self) -> None:
        for name in ("packages", "imports"):
            if isinstance(getattr(self, name), (str, bytes)):
                raise InvalidArgumentError(f"{name} must be a list of strings, e.g. {name}=[{getattr(self, name)!r}]")
        check_system_packages(self.system_packages)
        check_library_patterns(self.ignore_libraries)
        if self.gl is not None and self.gl not in GL_PRESETS:
            raise InvalidArgumentError(f"gl must be None, 'egl' or 'osmesa' (headless rendering presets), got {self.gl!r}")
        super().__post_init__()
        if not is_number(self.lease) or not self.lease > 0:
            raise InvalidArgumentError(f"lease must be a positive number of seconds, got {self.lease!r}")
        wrappers_wire_form(self.wrappers)
        check_progress(self.progress)

    def spec_kwargs(self) -> dict[str, Any]:
        """The options ``env.spec`` records: those that differ from their defaults."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata["spec"] and getattr(self, f.name) != _default(f)}


def _default(f: dataclasses.Field[Any]) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def option_default(name: str) -> Any:
    """The default of the sandbox option ``name``."""
    return _default(next(f for f in dataclasses.fields(SandboxOptions) if f.name == name))


def _names(group: str | None = None) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(SandboxOptions) if group is None or f.metadata["group"] == group)


OPTION_NAMES = _names()
"""Every sandbox option's name (a keyword close to one is a typo, not an env kwarg)."""
CLIENT_OPTIONS = _names("client")
"""The options a sandbox hands on to the client that connects to it."""
BUILD_OPTIONS = _names("build")
"""The options that apply only to images rlmesh builds (a prebuilt image refuses them)."""


_DOC_ORDER = {"build": 0, "image": 0, "source": 0, "container": 1}  # then the engine, the sandbox, the client


def option_fields(cls: type[ContainerOptions] = SandboxOptions) -> list[dataclasses.Field[Any]]:
    """``cls``'s fields in the order the docs list them: what goes into the image, the container, the rest."""
    return sorted(dataclasses.fields(cls), key=lambda f: _DOC_ORDER.get(f.metadata["group"], 2))


def options_doc(cls: type[ContainerOptions] = SandboxOptions, indent: int = 8) -> str:
    """The ``name: doc`` lines of ``cls``'s fields, as a docstring's ``Args:`` or ``Attributes:`` has them."""
    lines = []
    for f in option_fields(cls):
        lines += textwrap.wrap(f"{f.name}: {f.metadata['doc']}", width=110, initial_indent=" " * indent,
                               subsequent_indent=" " * (indent + 4), break_on_hyphens=False)
    return "\n".join(lines)


ContainerOptions.__doc__ = f"{ContainerOptions.__doc__}\n\n    Attributes:\n{options_doc(ContainerOptions)}\n"
SandboxOptions.__doc__ = f"{SandboxOptions.__doc__}\n\n    Attributes:\n{options_doc(SandboxOptions)}\n"
