"""Parse server addresses: ``unix:///abs/path.sock``, ``tcp://host:port`` or ``host:port``."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidArgumentError

__all__ = ["Address", "parse_address"]


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed server address.

    Attributes:
        path: The Unix socket path, or None for TCP.
        host: The TCP host, or None for a Unix socket.
        port: The TCP port, or None for a Unix socket.
    """

    path: str | None = None
    host: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix://{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def parse_address(address: str) -> Address:
    """Parse an address string.

    Args:
        address: ``unix:///abs/path.sock``, ``tcp://host:port`` or ``host:port``.

    Returns:
        The parsed address.

    Raises:
        InvalidArgumentError: The address is malformed.
    """
    if not isinstance(address, str) or not address:
        raise InvalidArgumentError(f"address must be a non-empty string, got {address!r}")
    if address.startswith("unix://"):
        path = address[len("unix://") :]
        if not path.startswith("/"):
            raise InvalidArgumentError(
                f"unix address {address!r} needs an absolute path: unix:///abs/path.sock"
            )
        return Address(path=path)
    rest = address[len("tcp://") :] if address.startswith("tcp://") else address
    if "://" in rest:
        raise InvalidArgumentError(
            f"unsupported address scheme in {address!r}: use unix:///abs/path.sock, "
            "tcp://host:port or host:port"
        )
    host, sep, port_text = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidArgumentError(
            f"malformed address {address!r}: use unix:///abs/path.sock, tcp://host:port or host:port"
        )
    return Address(host=host, port=int(port_text))
