"""``tls=``: how a client encrypts a TCP connection to a server."""

from __future__ import annotations

import ssl

from ..errors import InvalidArgumentError

__all__ = ["TlsOption", "make_client_tls"]

TlsOption = bool | str | ssl.SSLContext | None


def make_client_tls(tls: TlsOption) -> ssl.SSLContext | None:
    """``tls=`` as an ``SSLContext``: True (system CAs), a CA file path, or a context.

    Raises:
        InvalidArgumentError: Anything else, or a CA file that cannot be loaded.
    """
    if tls is None or tls is False:
        return None
    if tls is True:
        return ssl.create_default_context()
    if isinstance(tls, ssl.SSLContext):
        return tls
    if isinstance(tls, str):
        try:
            return ssl.create_default_context(cafile=tls)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidArgumentError(f"cannot load the TLS CA file {tls}: {exc}") from exc
    raise InvalidArgumentError(f"tls must be True, a CA file path or an ssl.SSLContext, got {tls!r}")
