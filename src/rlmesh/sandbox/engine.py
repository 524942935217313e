"""Engine: which Docker engine a sandbox runs on, and how the sandbox is reached there."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import InvalidArgumentError

__all__ = ["Engine"]


@dataclass(frozen=True)
class Engine:
    """Where a sandbox runs and how it is reached.

    Attributes:
        host: The Docker engine's URL (None: ``DOCKER_HOST``, else the local socket).
        relay: Reach the sandbox through a relay container's published TCP port (an engine on
            another machine, or ``transport="tcp"``), instead of a socket it dials.
        address_host: The host name the relay's port is reached at.
        local: Whether the engine runs on this machine.
        published: Clients on other machines reach the relay (at ``address_host``, its
            published port), so that is the sandbox's ``address``; this machine still reaches
            it at the relay's own address (a Ray actor placing a shard on its node).
    """

    host: str | None
    relay: bool
    address_host: str
    local: bool = True
    published: bool = False

    @classmethod
    def choose(cls, docker_host: str | None, transport: str | None) -> Engine:
        """The engine for ``docker_host=`` and ``transport=`` (``"unix"``, ``"tcp"`` or None).

        Raises:
            InvalidArgumentError: A malformed host, or ``transport="unix"`` with an engine elsewhere.
        """
        url = docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        if docker_host is not None and (not isinstance(docker_host, str) or not re.match(r"^(unix|tcp)://\S+$", docker_host)):
            raise InvalidArgumentError(f"docker_host must be tcp://HOST:PORT or unix:///path, got {docker_host!r}")
        if transport not in (None, "unix", "tcp"):
            raise InvalidArgumentError(f"transport must be 'unix', 'tcp' or None, got {transport!r}")
        local = url.startswith("unix://")
        if transport == "unix" and not local:
            raise InvalidArgumentError(
                f"the engine at {url} is not on this machine, so it cannot mount this machine's socket: "
                "use transport='tcp' (the default for such engines)"
            )
        if local:
            address_host = "127.0.0.1"
        else:
            netloc = url.split("://", 1)[1].split("/", 1)[0]
            address_host = netloc.rsplit(":", 1)[0].strip("[]") or "127.0.0.1"
        return cls(docker_host, relay=(transport == "tcp") or not local, address_host=address_host, local=local)
