"""ServerOptions: how an env server serves, checked once (see :class:`~rlmesh.server.core.EnvServer`)."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import ssl

from .._address import Address, parse_address
from .._checks import is_int, is_number
from ..errors import InvalidArgumentError
from ..protocol import DEFAULT_MAX_FRAME_SIZE, MIN_FRAME_SIZE, READY_LINE_PREFIX
from ..protocol import auth as _auth

__all__ = ["HELLO_TIMEOUT", "IDLE_TIMEOUT", "ServerOptions"]

HELLO_TIMEOUT = 10.0
"""Seconds a new connection has to finish its HELLO (and authentication)."""
IDLE_TIMEOUT = 300.0
"""Default seconds of silence after which a TCP client is dropped (Unix sockets: none)."""
MAX_CLIENTS = 4
"""Default clients a listening server serves at once, each with its own env (a dialled one: its owner)."""


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """An env server's options, checked (the arguments of :class:`~rlmesh.server.core.EnvServer`
    say what each means). Make one with :meth:`check`.

    Attributes:
        address: Where to serve (or, dialling, whom to dial).
        token: The token clients must prove they know, loaded (None: no authentication).
        idle_timeout: Seconds of silence that drop an active client (resolved: None for none).
        max_clients: Clients served at once, each with its own env (resolved: 1 dialling).
    """

    address: Address
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ready_message: str | None = READY_LINE_PREFIX
    hello_timeout: float = HELLO_TIMEOUT
    token: bytes | None = None
    tls: ssl.SSLContext | None = None
    idle_timeout: float | None = None
    lease: float | None = None
    dial: bool = False
    handoff: str | None = None
    max_clients: int = MAX_CLIENTS

    @property
    def tcp(self) -> bool:
        """Whether the address is a TCP one."""
        return self.address.path is None

    @classmethod
    def check(
        cls,
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
        max_clients: int | None = None,
    ) -> ServerOptions:
        """Check an env server's arguments (``token`` defaults to ``RLMESH_TOKEN`` over TCP and for handoff).

        Raises:
            InvalidArgumentError: TCP without a token (and not ``insecure`` on loopback), or a bad option.
        """
        addr = parse_address(address)
        tcp = addr.path is None
        if not is_int(max_frame_size) or max_frame_size < MIN_FRAME_SIZE:
            raise InvalidArgumentError(f"max_frame_size must be an int of at least {MIN_FRAME_SIZE}, got {max_frame_size!r}")
        if handoff is not None and (dial or not isinstance(handoff, str) or not os.path.isabs(handoff)):
            raise InvalidArgumentError(f"handoff must be an absolute socket path (and not with dial), got {handoff!r}")
        loaded = _auth.load_token(token, env=tcp or handoff is not None)
        if handoff is not None and loaded is None:
            raise InvalidArgumentError(
                "handoff serves the TCP clients a relay passes on: it needs a token (RLMESH_TOKEN, "
                "--token-file or --require-token), which the clients prove they know"
            )
        if tcp and loaded is None:
            if not insecure:
                raise InvalidArgumentError(
                    f"serving {addr} over TCP needs a token: set RLMESH_TOKEN or pass --token-file PATH "
                    "(clients pass the same token), or --insecure on a loopback address"
                )
            if not _is_loopback(addr.host or ""):
                raise InvalidArgumentError(
                    f"--insecure is allowed on loopback addresses only, not {addr.host}: anyone who can "
                    "reach this port could step the env. Set a token (RLMESH_TOKEN or --token-file)"
                )
        if tls is not None and not tcp:
            raise InvalidArgumentError("TLS applies to TCP addresses; a Unix socket is protected by its permissions")
        if not is_number(hello_timeout) or not hello_timeout > 0:
            raise InvalidArgumentError(f"hello_timeout must be a positive number of seconds, got {hello_timeout!r}")
        if idle_timeout == "default":
            idle_timeout = IDLE_TIMEOUT if tcp else None
        if idle_timeout is not None and (not is_number(idle_timeout) or not idle_timeout > 0):
            raise InvalidArgumentError(f"idle_timeout must be a positive number of seconds or None, got {idle_timeout!r}")
        if lease is not None and (not is_number(lease) or not lease > 0):
            raise InvalidArgumentError(f"lease must be a positive number of seconds or None, got {lease!r}")
        if dial and tcp:
            raise InvalidArgumentError("dial applies to Unix socket addresses")
        if max_clients is None:
            max_clients = 1 if dial else MAX_CLIENTS
        if not is_int(max_clients) or max_clients < 1 or (dial and max_clients != 1):
            raise InvalidArgumentError(
                f"max_clients must be a positive int (1 when dialling: a dialled server serves its owner), "
                f"got {max_clients!r}")
        return cls(addr, max_frame_size, ready_message, hello_timeout, loaded, tls, idle_timeout, lease, dial, handoff,
                   max_clients)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
