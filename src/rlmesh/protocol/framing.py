"""Length-prefixed frames and the sans-I/O connection state machine.

A frame is a fixed 16-byte header, an orjson header padded to 8 bytes, and the
raw array buffers, each padded to 8 bytes so that decoded arrays are aligned::

    magic "RL" | version u8 | type u8 | request_id u32 | json_len u32 | payload_len u32
    json: [body, [[dtype, shape], ...]]   (padded with spaces)
    payload: buffer 0, pad, buffer 1, pad, ...

The magic and a hard maximum frame size reject random bytes and other
protocols (an HTTP request, say) on their first 16 bytes, before anything is
buffered. Nothing here touches a socket: :meth:`Connection.receive_data` takes
bytes and returns messages, :meth:`Connection.encode` takes a message and
returns the bytes to send.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
import orjson

from ..errors import ProtocolError
from .values import decode_value, encode_value

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER_SIZE",
    "PROTOCOL_VERSION",
    "Connection",
    "Message",
    "MessageType",
    "encode_frame",
    "encode_message",
]

PROTOCOL_VERSION = 1
MAGIC = b"RL"
HEADER = struct.Struct("<2sBBIII")
HEADER_SIZE = HEADER.size
DEFAULT_MAX_FRAME_SIZE = 1 << 30
_MAX_JSON = 64 << 20
_PADS = [b" " * i for i in range(8)]
_SHARE_FRAME_MIN = 1 << 16  # in frames larger than this ...
_COPY_BELOW = 1 << 12  # ... arrays smaller than this are copied out
_ZEROS = [b"\0" * i for i in range(8)]


class MessageType(IntEnum):
    """The message kinds. A reply carries its request's type, or ``ERROR``."""

    HELLO = 1
    RESET = 2
    STEP = 3
    RENDER = 4
    CLOSE = 5
    ERROR = 6


_TYPES = frozenset(int(t) for t in MessageType)


@dataclass(slots=True)
class Message:
    """One decoded frame.

    Attributes:
        type: The message kind.
        request_id: Matches a reply to its request.
        body: The decoded body: values, with arrays in place.
    """

    type: MessageType
    request_id: int
    body: Any


def encode_message(mtype: MessageType, request_id: int, body: Any) -> list[bytes | memoryview]:
    """Encode one message into the chunks of a frame.

    Small frames come back as a single chunk; large arrays are passed as
    memoryviews so they are not copied before the socket write.

    Args:
        mtype: The message kind.
        request_id: The request id (0..2**32-1).
        body: Any value encodable by :func:`~rlmesh.protocol.values.encode_value`.

    Returns:
        Byte chunks to write in order.
    """
    buffers: list[np.ndarray[Any, Any]] = []
    tree = encode_value(body, buffers)
    return encode_frame(mtype, request_id, tree, buffers)


def encode_frame(
    mtype: MessageType, request_id: int, tree: Any, buffers: list[np.ndarray[Any, Any]]
) -> list[bytes | memoryview]:
    """Frame an already encoded tree and its buffers (see :func:`encode_message`).

    Args:
        mtype: The message kind.
        request_id: The request id.
        tree: A tree from :func:`~rlmesh.protocol.values.encode_value` or
            :func:`~rlmesh.protocol.spaces.encode_space`.
        buffers: The arrays the tree refers to.

    Returns:
        Byte chunks to write in order.
    """
    if not buffers:
        js = orjson.dumps([tree, ()])
        js += _PADS[-len(js) % 8]
        return [HEADER.pack(MAGIC, PROTOCOL_VERSION, mtype, request_id, len(js), 0) + js]
    meta = []
    chunks: list[bytes | memoryview] = []
    payload_len = 0
    for arr in buffers:
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        meta.append((arr.dtype.str, arr.shape))
        n = arr.nbytes
        chunks.append(arr.reshape(-1).view(np.uint8).data if n else b"")
        pad = -n % 8
        if pad:
            chunks.append(_ZEROS[pad])
        payload_len += n + pad
    js = orjson.dumps([tree, meta])
    js += _PADS[-len(js) % 8]
    head = HEADER.pack(MAGIC, PROTOCOL_VERSION, mtype, request_id, len(js), payload_len) + js
    if payload_len <= 65536:
        return [b"".join([head, *chunks])]
    return [head, *chunks]


class Connection:
    """Sans-I/O framing state for one byte stream.

    Feed received bytes to :meth:`receive_data`; it returns every complete
    message. Once it raised :class:`~rlmesh.errors.ProtocolError` the stream is
    out of sync and must be closed.

    Args:
        max_frame_size: Frames larger than this are rejected.
    """

    __slots__ = ("_buf", "_max", "failed")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self._buf = bytearray()
        self._max = max_frame_size
        self.failed = False

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._buf)

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Consume received bytes.

        Args:
            data: The next bytes of the stream.

        Returns:
            The messages completed by ``data`` (possibly none).

        Raises:
            ProtocolError: The stream does not follow the protocol.
        """
        if self.failed:
            raise ProtocolError("connection already failed a protocol check")
        buf = self._buf
        buf += data
        out: list[Message] = []
        while len(buf) >= HEADER_SIZE:
            magic, version, mtype, rid, jlen, plen = HEADER.unpack_from(buf)
            if magic != MAGIC:
                self._fail(f"bad frame magic {bytes(buf[:4])!r}: the peer does not speak rlmesh")
            if version != PROTOCOL_VERSION:
                self._fail(
                    f"peer speaks rlmesh protocol version {version}, this side speaks "
                    f"{PROTOCOL_VERSION}: install the same rlmesh version on both sides"
                )
            if mtype not in _TYPES:
                self._fail(f"unknown message type {mtype}")
            if jlen % 8 or jlen > _MAX_JSON or jlen + plen > self._max:
                self._fail(
                    f"frame of {jlen + plen} bytes (header {jlen}) exceeds the maximum of "
                    f"{self._max} bytes or is misaligned"
                )
            end = HEADER_SIZE + jlen + plen
            if len(buf) < end:
                break
            js = bytes(buf[HEADER_SIZE : HEADER_SIZE + jlen])
            payload = buf[HEADER_SIZE + jlen : end] if plen else None
            del buf[:end]
            out.append(self._decode(MessageType(mtype), rid, js, payload))
        return out

    def _decode(
        self, mtype: MessageType, rid: int, js: bytes, payload: bytearray | None
    ) -> Message:
        try:
            tree, meta = orjson.loads(js)
            arrays: list[np.ndarray[Any, Any]] = []
            offset = 0
            size = len(payload) if payload is not None else 0
            for dtype_str, shape in meta:
                dtype = np.dtype(dtype_str)
                if dtype.kind == "O" or dtype.hasobject:
                    raise ValueError("object buffers are not allowed")
                if type(shape) is not list:
                    raise ValueError(f"bad array shape {shape!r}")
                count = 1
                for d in shape:  # one pass: check each dimension and multiply
                    if type(d) is not int or d < 0:
                        raise ValueError(f"bad array shape {shape!r}")
                    count *= d
                n = count * dtype.itemsize
                if offset + n > size:
                    raise ValueError("an array runs past the end of the payload")
                if count:
                    arr = np.frombuffer(payload or b"", dtype=dtype, count=count, offset=offset).reshape(shape)
                    # A small array must not keep a big frame alive (rewards kept beside big frames).
                    arrays.append(arr.copy() if size > _SHARE_FRAME_MIN and n < _COPY_BELOW else arr)
                else:
                    arrays.append(np.empty(shape, dtype=dtype))
                offset += n + (-n % 8)
            if offset != size:
                raise ValueError("buffer sizes do not add up to the payload length")
            body = decode_value(tree, arrays)
        except ProtocolError:
            raise
        except Exception as exc:  # any malformed header is a protocol error
            self._fail(f"malformed frame: {type(exc).__name__}: {exc}", exc)
        return Message(mtype, rid, body)

    def _fail(self, message: str, cause: BaseException | None = None) -> Any:
        self.failed = True
        self._buf.clear()
        raise ProtocolError(message) from cause
