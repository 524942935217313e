"""The authentication exchange: HMAC-SHA256 challenge and response over both sides' nonces.

::

    client -> server   HELLO {version, nonce: Nc}
    server -> client   AUTH  {nonce: Ns}                        (only when the server has a token)
    client -> server   AUTH  {proof: HMAC(token, "client" | Nc | Ns)}
    server -> client   HELLO {..., proof: HMAC(token, "server" | Nc | Ns)}

The token never crosses the wire. The server speaks its proof only after the client has
proved itself, so an unauthenticated peer learns nothing it could attack offline; a fresh
``Ns`` per connection means a recorded exchange cannot be replayed, and the client checks the
server's proof before it believes anything the server says.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets

from ..errors import InvalidArgumentError

__all__ = ["MIN_TOKEN_LENGTH", "NONCE_HEX", "load_token", "new_nonce", "proof", "valid_nonce", "verify"]

NONCE_HEX = 64  # 32 random bytes, hex
MIN_TOKEN_LENGTH = 16
_NONCE = re.compile(r"^[0-9a-f]{64}$")
_LABEL = b"rlmesh-auth-v1"


def new_nonce() -> str:
    """32 fresh random bytes, as hex."""
    return secrets.token_hex(NONCE_HEX // 2)


def valid_nonce(value: object) -> bool:
    """Whether a received value is a well-formed nonce."""
    return isinstance(value, str) and bool(_NONCE.match(value))


def proof(token: bytes, role: str, client_nonce: str, server_nonce: str) -> str:
    """The proof that ``role`` (``client`` or ``server``) knows ``token`` for these nonces."""
    msg = b"|".join((_LABEL, role.encode(), client_nonce.encode(), server_nonce.encode()))
    return hmac.new(token, msg, hashlib.sha256).hexdigest()


def verify(expected: str, received: object) -> bool:
    """Compare a received proof in constant time."""
    return isinstance(received, str) and hmac.compare_digest(expected.encode(), received.encode("utf-8", "replace"))


def load_token(token: str | bytes | None = None, *, token_file: str | None = None, env: bool = True) -> bytes | None:
    """The shared token from ``token``, ``token_file`` or ``RLMESH_TOKEN`` (in that order).

    Surrounding whitespace (a trailing newline in a file) is ignored.

    Raises:
        InvalidArgumentError: The file cannot be read, or the token is shorter than 16 characters.
    """
    source = "token"
    value: str | bytes | None = token
    if value is None and token_file is not None:
        source = f"token file {token_file}"
        try:
            with open(token_file, "rb") as f:
                value = f.read(4096)
        except OSError as exc:
            raise InvalidArgumentError(f"cannot read the token file {token_file}: {exc.strerror or exc}") from exc
    if value is None and env:
        source = "RLMESH_TOKEN"
        value = os.environ.get("RLMESH_TOKEN") or None
    if value is None:
        return None
    raw = (value.encode() if isinstance(value, str) else bytes(value)).strip()
    if len(raw) < MIN_TOKEN_LENGTH:
        raise InvalidArgumentError(
            f"the {source} is {len(raw)} characters; use at least {MIN_TOKEN_LENGTH}, e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return raw
