"""The rlmesh wire protocol, sans-I/O: the whole contract between a client and a server.

* :mod:`rlmesh.protocol.framing` frames messages and parses byte streams (bounded).
* :mod:`rlmesh.protocol.values` encodes values (arrays as raw buffers).
* :mod:`rlmesh.protocol.spaces` describes Gymnasium spaces.
* :mod:`rlmesh.protocol.messages` builds and checks every message body.
* :mod:`rlmesh.protocol.faults` maps ERROR kinds to exceptions and back, and builds ERROR bodies.
* :mod:`rlmesh.protocol.auth` is the token challenge and response.
* :mod:`rlmesh.protocol.session` is the handshake, both sides, as state machines.
* :mod:`rlmesh.protocol.bounds` bounds a STEP or RESET reply by what the spaces allow.
* :mod:`rlmesh.protocol.data_plane` lays the spaces' fixed-shape arrays out in a shared region.
* :mod:`rlmesh.protocol.options` holds what the host and server agree on outside frames
  (source grammar, vectorization and autoreset modes, the ready line).

Nothing here does I/O. ``docs/protocol.md`` specifies the same for other languages.
"""

from __future__ import annotations

from .faults import KINDS, ErrorBody, error_for_exception, exception_for_error
from .framing import (
    DEFAULT_MAX_FRAME_SIZE,
    MIN_FRAME_SIZE,
    PROTOCOL_VERSION,
    Connection,
    Frame,
    MessageType,
    encode_frame,
    encode_message,
)
from .messages import (
    AuthChallenge,
    AuthProof,
    CallRequest,
    ClientHello,
    ResetRequest,
    ServerHello,
    SpecData,
    decode_reset_reply,
    decode_step_reply,
)
from .options import READY_LINE_PREFIX, VECTORIZATION_MODES, parse_autoreset_mode, parse_vectorization_mode
from .spaces import decode_space, encode_space
from .values import Decoder, encode_value

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "KINDS",
    "MIN_FRAME_SIZE",
    "PROTOCOL_VERSION",
    "READY_LINE_PREFIX",
    "VECTORIZATION_MODES",
    "AuthChallenge",
    "AuthProof",
    "CallRequest",
    "ClientHello",
    "Connection",
    "Decoder",
    "ErrorBody",
    "Frame",
    "MessageType",
    "ResetRequest",
    "ServerHello",
    "SpecData",
    "decode_reset_reply",
    "decode_space",
    "decode_step_reply",
    "encode_value",
    "encode_frame",
    "encode_message",
    "encode_space",
    "error_for_exception",
    "exception_for_error",
    "parse_autoreset_mode",
    "parse_vectorization_mode",
]
