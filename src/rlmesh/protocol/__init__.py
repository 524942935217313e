"""The rlmesh wire protocol, sans-I/O: bytes in, messages out; messages in, bytes out.

* :mod:`rlmesh.protocol.values` encodes values (arrays as raw buffers).
* :mod:`rlmesh.protocol.spaces` describes Gymnasium spaces.
* :mod:`rlmesh.protocol.framing` frames messages and parses byte streams.
* :mod:`rlmesh.protocol.messages` builds and reads the bodies of each message.
"""

from __future__ import annotations

from .framing import (
    DEFAULT_MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    Connection,
    Message,
    MessageType,
    encode_frame,
    encode_message,
)
from .spaces import decode_space, encode_space
from .values import decode_value, encode_value

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "PROTOCOL_VERSION",
    "Connection",
    "Message",
    "MessageType",
    "decode_space",
    "decode_value",
    "encode_frame",
    "encode_message",
    "encode_space",
    "encode_value",
]
