"""ClientOptions: how a client connects to a server and what it accepts from it, checked once."""

from __future__ import annotations

import dataclasses
from typing import Any

from .._address import parse_address
from .._checks import is_int, is_number
from ..errors import InvalidArgumentError
from ..protocol import DEFAULT_MAX_FRAME_SIZE, MIN_FRAME_SIZE
from ..protocol.bounds import DEFAULT_MAX_INFO_SIZE, DEFAULT_MAX_VARIABLE_SIZE
from ..protocol.data_plane import DEFAULT_MAX_REGION_SIZE
from .data_plane import DATA_PLANES
from .tls import TlsOption

__all__ = ["ClientOptions"]


@dataclasses.dataclass(frozen=True)
class ClientOptions:
    """The options of :class:`~rlmesh.client.env.AsyncRemoteEnv` and every class built on it.

    Attributes:
        connect_timeout: Seconds allowed for connecting and the handshake; None waits forever.
        request_timeout: Seconds allowed for each reply; None waits forever.
        max_frame_size: The largest reply frame accepted (bytes).
        token: The server's token (default ``RLMESH_TOKEN``).
        tls: Encrypt TCP: True (system CAs), a CA file path, or an ``ssl.SSLContext``.
        strict_actions: Check each action against the action space before sending it.
        max_info_size: Bytes a STEP or RESET reply may spend on its info dict.
        max_variable_size: Bytes a reply may spend on leaves the spaces do not bound.
        data_plane: ``"auto"`` (shared memory where the server offers it) or ``"socket"``.
        max_region_size: The largest shared region the host creates for a connection (bytes);
            a layout larger than this uses the socket.
    """

    connect_timeout: float | None = 10.0
    request_timeout: float | None = None
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    token: str | bytes | None = None
    tls: TlsOption = None
    strict_actions: bool = False
    max_info_size: int = DEFAULT_MAX_INFO_SIZE
    max_variable_size: int = DEFAULT_MAX_VARIABLE_SIZE
    data_plane: str = "auto"
    max_region_size: int = DEFAULT_MAX_REGION_SIZE

    def __post_init__(self) -> None:
        if not is_int(self.max_frame_size) or self.max_frame_size < MIN_FRAME_SIZE:
            raise InvalidArgumentError(
                f"max_frame_size must be an int of at least {MIN_FRAME_SIZE}, got {self.max_frame_size!r}")
        if self.data_plane not in DATA_PLANES:
            raise InvalidArgumentError(f"data_plane must be one of {DATA_PLANES}, got {self.data_plane!r}")
        for name in ("connect_timeout", "request_timeout"):
            value = getattr(self, name)
            if value is not None and (not is_number(value) or not value > 0):
                raise InvalidArgumentError(f"{name} must be a positive number of seconds or None, got {value!r}")
        for name in ("max_info_size", "max_variable_size", "max_region_size"):
            size = getattr(self, name)
            if not is_int(size) or size < 0:
                raise InvalidArgumentError(f"{name} must be a number of bytes (an int >= 0), got {size!r}")
        if not isinstance(self.strict_actions, bool):
            raise InvalidArgumentError(f"strict_actions must be True or False, got {self.strict_actions!r}")

    def check_address(self, address: str | None) -> None:
        """Check the options against the address (before anything connects).

        Raises:
            InvalidArgumentError: A malformed address, or TLS over a Unix socket.
        """
        if address is None:
            return
        if parse_address(address).path is not None and self.tls is not None and self.tls is not False:
            raise InvalidArgumentError("tls applies to TCP addresses, not Unix sockets")

    def spec_kwargs(self) -> dict[str, Any]:
        """The options that differ from their defaults, but the token (``env.spec`` never holds a secret)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "token" and getattr(self, f.name) != f.default}
