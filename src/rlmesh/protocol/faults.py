"""ERROR bodies: what each error kind means, and the exception each side raises for it.

An ERROR frame answers a request (its request id) or the connection as a whole
(request id 0, after which the sender closes). Its body is::

    {"kind": KIND, "type": "module.QualName", "message": str, "traceback": str, "space": str}

``KINDS`` lists every kind and says whether the connection stays usable.
"""

from __future__ import annotations

import builtins
import traceback
from dataclasses import dataclass
from typing import Any

import gymnasium.error

from ..errors import (
    AuthenticationError,
    ConnectionClosedError,
    InvalidActionError,
    InvalidArgumentError,
    ProtocolError,
    RemoteEnvError,
    RLMeshError,
    ServerBusyError,
)
from .framing import Frame, MessageType, encode_message

__all__ = ["KINDS", "ErrorBody", "env_error", "error_for_exception", "exception_for_error", "remote_error_class"]

KINDS: dict[str, tuple[str, bool]] = {
    "env": ("the env raised; the connection stays usable", True),
    "invalid_action": ("the action is not in the action space (strict actions); usable", True),
    "bad_request": ("the request was well framed but not acceptable; usable", True),
    "busy": ("the server already serves a client; it closes this connection", False),
    "protocol": ("the peer broke the protocol; the sender closes the connection", False),
    "auth": ("authentication failed; the server closes the connection", False),
    "idle": ("the client was idle past the server's idle timeout; the server closes the connection", False),
}

# The exception each side raises for a kind that closes the connection (exception_for_error).
_CLOSING_TYPES = {"protocol": "ProtocolError", "auth": "AuthenticationError", "idle": "ConnectionClosedError"}
_MAX_MESSAGE = 64 << 10
_MAX_TRACEBACK = 256 << 10


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """The body of an ERROR frame.

    Attributes:
        kind: One of :data:`KINDS`.
        type: The qualified name of the exception type on the sender's side.
        message: ``str()`` of the exception.
        traceback: The sender's formatted traceback ('' when none).
        space: The action space, for ``invalid_action``.
    """

    kind: str
    type: str
    message: str
    traceback: str = ""
    space: str = ""

    def encode(self, request_id: int) -> bytes:
        """The ERROR frame."""
        body = {"kind": self.kind, "type": self.type, "message": self.message[:_MAX_MESSAGE],
                "traceback": self.traceback[-_MAX_TRACEBACK:], "space": self.space[:_MAX_MESSAGE]}
        return encode_message(MessageType.ERROR, request_id, body)

    @classmethod
    def bad_request(cls, message: str) -> ErrorBody:
        """A well-framed request that cannot be accepted (the connection stays usable)."""
        return cls("bad_request", "InvalidArgumentError", message)

    @classmethod
    def busy(cls, message: str) -> ErrorBody:
        """The server cannot take this client now; it closes the connection."""
        return cls("busy", "ServerBusyError", message)

    @classmethod
    def closing(cls, kind: str, reason: str) -> ErrorBody:
        """Why the sender closes the connection: ``protocol``, ``auth`` or ``idle`` (see :data:`KINDS`)."""
        return cls(kind, _CLOSING_TYPES[kind], reason)

    @classmethod
    def decode(cls, frame: Frame) -> ErrorBody:
        """Read an ERROR body; anything malformed becomes a ``protocol`` error.

        Long fields are cut, so a peer's error cannot flood logs or memory.
        """
        tree = frame.tree
        kind = tree.get("kind") if type(tree) is dict else None
        if frame.arrays or type(kind) is not str or kind not in KINDS:
            return cls("protocol", "ProtocolError", f"malformed ERROR body from the peer: {str(tree)[:200]}")
        fields = {}
        for name, limit in (("type", 200), ("message", _MAX_MESSAGE), ("traceback", _MAX_TRACEBACK), ("space", _MAX_MESSAGE)):
            value = tree.get(name, "")
            fields[name] = value[:limit] if type(value) is str else ""
        return cls(kind, **fields)


def error_for_exception(exc: BaseException) -> ErrorBody:
    """The ERROR body the server sends for an exception raised while handling a request."""
    if isinstance(exc, InvalidActionError):
        return ErrorBody("invalid_action", "InvalidActionError", str(exc), space=exc.space)
    if isinstance(exc, InvalidArgumentError) and not isinstance(exc, RemoteEnvError):
        return ErrorBody("bad_request", type(exc).__name__, str(exc))
    return env_error(exc)


def env_error(exc: BaseException) -> ErrorBody:
    """An ``env`` ERROR body for an exception the env (or the making of it) raised."""
    t = type(exc)
    return ErrorBody(
        "env", f"{t.__module__}.{t.__qualname__}", str(exc), "".join(traceback.format_exception(exc))
    )


def exception_for_error(body: ErrorBody) -> RLMeshError:
    """The exception a client raises for an ERROR body."""
    kind = body.kind
    if kind == "env":
        error: RemoteEnvError = remote_error_class(body.type)(body.type, body.message, body.traceback)
        return error
    if kind == "invalid_action":
        return InvalidActionError(body.message, space=body.space)
    if kind == "bad_request":
        return InvalidArgumentError(body.message)
    if kind == "busy":
        return ServerBusyError(body.message)
    if kind == "auth":
        return AuthenticationError(body.message)
    if kind == "idle":
        return ConnectionClosedError(body.message)
    return ProtocolError(f"the server reported a protocol error: {body.message}")


_classes: dict[tuple[type, str], type] = {}
def remote_error_class(
    type_name: str, root: type[RLMeshError] = RemoteEnvError, probe: tuple[Any, ...] = ("t", "m", "")
) -> type[Any]:
    """The class raised for a remote exception type: ``root`` (:class:`RemoteEnvError` by
    default), also an instance of the builtin or ``gymnasium.error`` class of that name when
    there is one.

    Nothing is imported: the name is looked up among the builtins and in the already imported
    ``gymnasium.error`` module only. Types whose constructors need more than a message fall
    back to their nearest base that takes one.

    Args:
        type_name: The remote exception's qualified type name.
        root: The rlmesh class to mix the remote type into.
        probe: Arguments ``root`` is constructed with (the made class must accept them).
    """
    key = (root, type_name)
    cls = _classes.get(key)
    if cls is not None:
        return cls
    module, _, name = type_name.rpartition(".")
    base: Any = None
    if module == "builtins":
        base = vars(builtins).get(name)
    elif module == "gymnasium.error":
        base = vars(gymnasium.error).get(name)
    cls = root
    if isinstance(base, type) and issubclass(base, Exception) and not issubclass(base, RLMeshError):
        for candidate in base.__mro__:
            if candidate is Exception or not issubclass(candidate, Exception):
                break
            try:
                made = type(f"{root.__name__}[{candidate.__name__}]", (root, candidate), {
                    "__module__": root.__module__, "__str__": root.__str__,
                })
                made(*probe)  # the constructor must take rlmesh's arguments
            except TypeError:
                continue
            cls = made
            break
    if len(_classes) < 1000:  # type names come from the peer: bound the cache
        _classes[key] = cls
    return cls
