"""Length-prefixed frames and the sans-I/O stream parser.

A frame is a fixed 16-byte header, an orjson header padded to 8 bytes, and the
raw array buffers, each padded to 8 bytes so that decoded arrays are aligned::

    magic "RL" | version u8 | type u8 | request_id u32 | json_len u32 | payload_len u32
    json: [body, [[dtype, shape], ...]]   (padded with spaces)
    payload: buffer 0, pad, buffer 1, pad, ...

The magic, the version, the type and the declared lengths are checked on the
first 16 bytes, before anything else is buffered, so a peer cannot make this
side hold more than it allowed. A frame's bytes are then received into one
buffer of exactly the declared size, which the decoded arrays view: receiving a
frame costs its size once, plus one read chunk.

Nothing here touches a socket: :meth:`Connection.receive_data` takes bytes and
returns frames; :func:`encode_frame` takes a body and returns the bytes to send.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
import orjson

from ..errors import ProtocolError
from .values import Decoder, encode_value

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER_SIZE",
    "MIN_FRAME_SIZE",
    "PROTOCOL_VERSION",
    "Connection",
    "Frame",
    "MessageType",
    "encode_frame",
    "encode_message",
]

PROTOCOL_VERSION = 2
MAGIC = b"RL"
HEADER = struct.Struct("<2sBBIII")
HEADER_SIZE = HEADER.size
DEFAULT_MAX_FRAME_SIZE = 1 << 30
MIN_FRAME_SIZE = 1 << 16
"""The smallest ``max_frame_size`` a side may set (the handshake must fit)."""
MAX_BUFFERS = 1 << 16
"""Most raw buffers one frame may carry."""
_SHARE_FRAME_MIN = 1 << 16  # in frames larger than this ...
_COPY_BELOW = 1 << 12  # ... arrays smaller than this are copied out
_PADS = [b" " * i for i in range(8)]
_ZEROS = [b"\0" * i for i in range(8)]
# dtype strings a peer may send: byte order, a plain kind, a size, a datetime unit.
_DTYPE = re.compile(r"^[<>|=][biufcSUMm]\d{1,6}(?:\[\w{1,6}\])?$")
_MAX_NDIM = 32


_DTYPES: dict[str, np.dtype[Any]] = {}


def _parse_dtype(text: Any) -> np.dtype[Any]:
    if type(text) is not str or not _DTYPE.match(text):
        raise ValueError(f"dtype {text!r:.40} is not allowed")
    dtype = np.dtype(text)
    if len(_DTYPES) < 256:  # the strings come from the peer: bound the cache
        _DTYPES[text] = dtype
    return dtype


class MessageType(IntEnum):
    """The message kinds. A reply carries its request's type, or ``ERROR``."""

    HELLO = 1
    RESET = 2
    STEP = 3
    RENDER = 4
    CLOSE = 5
    ERROR = 6
    AUTH = 7
    CALL = 8
    MAP = 9
    """Hand the server a shared-memory region (feature ``shm1``; see :mod:`rlmesh.protocol.data_plane`)."""
    STEP_SHARED = 10
    """A STEP whose reply may leave its fixed-shape arrays in the region (``None`` in their place)."""
    RESET_SHARED = 11
    """A RESET whose reply may leave its fixed-shape arrays in the region."""


_TYPES = frozenset(int(t) for t in MessageType)


@dataclass(slots=True)
class Frame:
    """One received frame: its header fields, JSON tree and raw buffers.

    The tree is not yet decoded into values; :meth:`value` does that, and the
    typed decoders in :mod:`rlmesh.protocol.messages` build bodies from it.

    Attributes:
        type: The message kind.
        request_id: Matches a reply to its request.
        tree: The JSON body, as parsed by orjson.
        arrays: The frame's buffers, viewed as numpy arrays.
    """

    type: MessageType
    request_id: int
    tree: Any
    arrays: list[np.ndarray[Any, Any]]

    def decoder(self) -> Decoder:
        """A decoder over this frame's buffers (each may be taken once)."""
        return Decoder(self.arrays)

    def value(self) -> Any:
        """Decode the body as one value.

        Raises:
            ProtocolError: The body is malformed.
        """
        try:
            decoder = Decoder(self.arrays)
            value = decoder.value(self.tree)
            decoder.finish()
        except (ValueError, TypeError, KeyError, IndexError, RecursionError, OverflowError) as exc:
            raise ProtocolError(f"malformed {self.type.name} body: {exc}") from exc
        return value


def encode_message(mtype: MessageType, request_id: int, body: Any) -> bytes:
    """Encode one message into the bytes of a frame.

    Args:
        mtype: The message kind.
        request_id: The request id (0..2**32-1).
        body: Any value encodable by :func:`~rlmesh.protocol.values.encode_value`.

    Returns:
        The frame.
    """
    if type(body) is np.ndarray and body.dtype.kind in _RAW_KINDS and body.flags.c_contiguous:
        return _encode_array_message(mtype, request_id, body)
    buffers: list[np.ndarray[Any, Any]] = []
    tree = encode_value(body, buffers)
    return encode_frame(mtype, request_id, tree, buffers)


_RAW_KINDS = frozenset("biufcSUMm")
_ARRAY_JSON: dict[tuple[str, tuple[int, ...]], bytes] = {}


def _encode_array_message(mtype: MessageType, request_id: int, arr: np.ndarray[Any, Any]) -> bytes:
    # A body that is one array (a batch of actions): the same bytes as encode_frame makes, with the
    # JSON of each dtype and shape made once.
    key = (arr.dtype.str, arr.shape)
    js = _ARRAY_JSON.get(key)
    if js is None:
        js = orjson.dumps([{"__nd__": 0}, [key]])
        js += _PADS[-len(js) % 8]
        if len(_ARRAY_JSON) < 256:
            _ARRAY_JSON[key] = js
    n = arr.nbytes
    pad = -n % 8
    head = HEADER.pack(MAGIC, PROTOCOL_VERSION, mtype, request_id, len(js), n + pad)
    if not n:
        return head + js
    data = arr.tobytes() if n <= _COPY_BELOW else arr.reshape(-1).view(np.uint8).data
    return b"".join((head, js, data, _ZEROS[pad]))


def encode_frame(
    mtype: MessageType, request_id: int, tree: Any, buffers: list[np.ndarray[Any, Any]]
) -> bytes:
    """Frame an already encoded tree and its buffers (see :func:`encode_message`).

    The result is one ``bytes`` object holding copies of the buffers, so the
    frame never shares memory with arrays the sender may overwrite before the
    transport has written it all (an env reusing its observation buffer).

    Args:
        mtype: The message kind.
        request_id: The request id.
        tree: A tree from :func:`~rlmesh.protocol.values.encode_value` or
            :func:`~rlmesh.protocol.spaces.encode_space`.
        buffers: The arrays the tree refers to.

    Returns:
        The frame.
    """
    if not buffers:
        js = orjson.dumps([tree, ()])
        js += _PADS[-len(js) % 8]
        return HEADER.pack(MAGIC, PROTOCOL_VERSION, mtype, request_id, len(js), 0) + js
    meta = []
    chunks: list[bytes | memoryview] = []
    payload_len = 0
    for arr in buffers:
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        meta.append((arr.dtype.str, arr.shape))
        n = arr.nbytes
        if n:
            chunks.append(arr.reshape(-1).view(np.uint8).data)
        pad = -n % 8
        if pad:
            chunks.append(_ZEROS[pad])
        payload_len += n + pad
    js = orjson.dumps([tree, meta])
    js += _PADS[-len(js) % 8]
    head = HEADER.pack(MAGIC, PROTOCOL_VERSION, mtype, request_id, len(js), payload_len)
    return b"".join([head, js, *chunks])


class Connection:
    """Sans-I/O framing state for one byte stream.

    Feed received bytes to :meth:`receive_data`; it returns every complete
    frame. Once it raised :class:`~rlmesh.errors.ProtocolError` the stream is
    out of sync and must be closed.

    Args:
        max_frame_size: Frames larger than this (header included) are rejected.
            It can be changed between frames (a server keeps it small until the
            peer has authenticated).
    """

    __slots__ = ("_filled", "_frame", "_head", "_header", "failed", "limit_reason", "max_frame_size", "reply_limits")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self._head = bytearray()
        self._frame: bytearray | None = None
        self._header: tuple[int, int, int, int] = (0, 0, 0, 0)
        self._filled = 0
        self.max_frame_size = max_frame_size
        self.limit_reason = "max_frame_size on this side"
        """Said when a frame is over ``max_frame_size``: where the limit comes from, what to do."""
        self.reply_limits: dict[int, int] | None = None
        """Request ids whose reply may be bigger than ``max_frame_size`` (a client's RENDER and CALL
        replies, once STEP and RESET replies are bounded by the spaces). Each entry is used once:
        it is removed when a frame with that id arrives."""
        self.failed = False

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._head) + (HEADER_SIZE + self._filled if self._frame is not None else 0)

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Consume received bytes.

        Args:
            data: The next bytes of the stream.

        Returns:
            The frames completed by ``data`` (possibly none).

        Raises:
            ProtocolError: The stream does not follow the protocol.
        """
        if self.failed:
            raise ProtocolError("connection already failed a protocol check")
        out: list[Frame] = []
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            frame = self._frame
            if frame is None:
                head = self._head
                if not head and end - pos >= HEADER_SIZE:
                    # The usual case: a whole header at hand, parsed in place.
                    size = self._check_header(view[pos : pos + HEADER_SIZE])
                    pos += HEADER_SIZE
                else:
                    take = min(HEADER_SIZE - len(head), end - pos)
                    head += view[pos : pos + take]
                    pos += take
                    if len(head) < HEADER_SIZE:
                        break
                    size = self._check_header(head)
                    head.clear()
                if end - pos >= size:  # the whole frame is here: one copy, no bookkeeping
                    out.append(self._decode(bytearray(view[pos : pos + size])))
                    pos += size
                    continue
                frame = self._frame = bytearray(size)
            take = min(len(frame) - self._filled, end - pos)
            frame[self._filled : self._filled + take] = view[pos : pos + take]
            self._filled += take
            pos += take
            if self._filled == len(frame):
                self._frame, self._filled = None, 0
                out.append(self._decode(frame))
        return out

    def _check_header(self, head: bytearray | memoryview) -> int:
        """Check a frame header; returns the size of the rest of the frame."""
        magic, version, mtype, rid, jlen, plen = HEADER.unpack_from(head)
        if magic != MAGIC:
            self._fail(f"bad frame magic {bytes(head[:4])!r}: the peer does not speak rlmesh")
        if version != PROTOCOL_VERSION:
            self._fail(
                f"peer speaks rlmesh protocol version {version}, this side speaks "
                f"{PROTOCOL_VERSION}: install the same rlmesh version on both sides"
            )
        if mtype not in _TYPES:
            self._fail(f"unknown message type {mtype}")
        size = HEADER_SIZE + jlen + plen
        limit = self.max_frame_size
        limits = self.reply_limits
        if limits is not None and limits:
            bigger = limits.pop(rid, None)
            if bigger is not None:
                limit = bigger
        if size > limit:
            reason = self.limit_reason if limit == self.max_frame_size else "max_frame_size on this side"
            self._fail(f"frame of {size} bytes exceeds the maximum of {limit} bytes ({reason})")
        if jlen % 8 or plen % 8 or jlen == 0:
            self._fail(f"misaligned frame (header {jlen} bytes, payload {plen} bytes)")
        self._header = (mtype, rid, jlen, plen)
        return int(jlen + plen)

    def _decode(self, frame: bytearray) -> Frame:
        mtype, rid, jlen, plen = self._header
        try:
            view = memoryview(frame)
            parsed = orjson.loads(view[:jlen] if plen > _SHARE_FRAME_MIN else bytes(view[:jlen]))  # bytes parse faster
            if type(parsed) is not list or len(parsed) != 2 or type(parsed[1]) is not list:
                raise ValueError("a frame's JSON must be [body, buffers]")
            tree, meta = parsed
            if len(meta) > MAX_BUFFERS:
                raise ValueError(f"more than {MAX_BUFFERS} buffers")
            arrays: list[np.ndarray[Any, Any]] = []
            payload = view[jlen:]
            offset = 0
            copy_small = plen > _SHARE_FRAME_MIN
            for item in meta:
                if type(item) is not list or len(item) != 2:
                    raise ValueError("malformed buffer description")
                dtype_str, shape = item
                dtype = _DTYPES.get(dtype_str) if type(dtype_str) is str else None
                if dtype is None:
                    dtype = _parse_dtype(dtype_str)
                if type(shape) is not list or len(shape) > _MAX_NDIM:
                    raise ValueError(f"bad array shape {shape!r:.60}")
                count = 1
                for d in shape:  # one pass: check each dimension and multiply
                    if type(d) is not int or d < 0:
                        raise ValueError(f"bad array shape {shape!r:.60}")
                    count *= d
                n = count * dtype.itemsize
                if offset + n > plen:
                    raise ValueError("an array runs past the end of the payload")
                if count:
                    arr = np.frombuffer(payload, dtype=dtype, count=count, offset=offset)
                    if len(shape) != 1:
                        arr = arr.reshape(shape)
                    # A small array must not keep a big frame alive (rewards kept beside big frames).
                    arrays.append(arr.copy() if copy_small and n < _COPY_BELOW else arr)
                else:
                    arrays.append(np.empty(shape, dtype=dtype))
                offset += n + (-n % 8)
            if offset != plen:
                raise ValueError("buffer sizes do not add up to the payload length")
        except Exception as exc:  # any malformed header is a protocol error
            self._fail(f"malformed frame: {type(exc).__name__}: {exc}", exc)
        return Frame(MessageType(mtype), rid, tree, arrays)

    def _fail(self, message: str, cause: BaseException | None = None) -> Any:
        self.failed = True
        self._head.clear()
        self._frame, self._filled = None, 0
        raise ProtocolError(message) from cause
