"""Value codec: Python and numpy values to an orjson tree plus raw buffers.

Observations, actions, rewards and info dicts cross the wire as a JSON tree
(encoded by orjson) in which every numpy array is replaced by a reference to a
raw buffer carried after the JSON. Decoding maps those buffers back with
``np.frombuffer`` without copying.

The encoding rules, in full:

* ``np.ndarray`` of a numeric, bool, bytes, unicode or datetime dtype: a raw
  buffer with its dtype and shape; it decodes to an array of the same dtype
  and shape. Object arrays are encoded element by element and keep their shape.
* numpy scalars (``np.float32(1.0)``, ``np.bool_(True)`` ...): a 0-d buffer;
  they decode to the same numpy scalar type.
* ``str``, ``bool``, ``None``, finite ``float`` and ``int`` are plain JSON.
  ``nan``, ``inf`` and integers beyond 64 bits are tagged and decode exactly.
* ``list`` stays ``list``, ``tuple`` stays ``tuple``, ``dict`` stays ``dict``
  (keys of any encodable type; insertion order kept), ``bytes`` stays
  ``bytes``, and ``gymnasium.spaces.GraphInstance`` stays a ``GraphInstance``.
* Anything else is replaced by its ``repr()`` string (cut to
  :data:`MAX_REPR` characters). This never raises, so an exotic object in an
  info dict cannot break a step.

Decoding treats the tree as hostile (see ``docs/protocol.md``): every buffer is
referenced exactly once, so a frame cannot make the decoder copy one buffer many
times; nesting is limited to :data:`MAX_DEPTH` levels; tags are checked for
their exact shape. A violation raises ``ValueError``, which the framing layer
turns into :class:`~rlmesh.errors.ProtocolError`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium.spaces import GraphInstance

__all__ = ["MAX_DEPTH", "MAX_REPR", "Decoder", "encode_value", "unencodable"]

# A buffer is described by (dtype.str, shape) in the header.

MAX_DEPTH = 100
"""Deepest nesting of lists, dicts and tags a decoded value may have."""
MAX_REPR = 4096
"""Longest ``repr()`` string sent for an object the codec cannot encode."""

_ARRAY_KINDS = frozenset("biufcSUMm")
_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1

# Tag keys. A dict with exactly one key that is one of these is a tagged value;
# user dicts that would look like one are sent in the explicit pair form.
_T_ARRAY = "__nd__"
_T_SCALAR = "__ns__"
_T_OBJARRAY = "__no__"
_T_TUPLE = "__t__"
_T_FLOAT = "__f__"
_T_INT = "__i__"
_T_BYTES = "__by__"
_T_DICT = "__d__"
_T_GRAPH = "__g__"
_TAGS = frozenset(
    (_T_ARRAY, _T_SCALAR, _T_OBJARRAY, _T_TUPLE, _T_FLOAT, _T_INT, _T_BYTES, _T_DICT, _T_GRAPH)
)
_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_NODES = frozenset((dict, list))


def encode_value(value: Any, buffers: list[np.ndarray[Any, Any]]) -> Any:
    """Encode ``value`` into an orjson-serialisable tree.

    Args:
        value: Any value; see the module docstring for the rules.
        buffers: Arrays referenced by the tree are appended here, in order.

    Returns:
        A tree of dict, list, str, int, float, bool and None.
    """
    t = type(value)
    if t is np.ndarray:
        return _encode_array(value, buffers)
    if t is str or t is bool or value is None:
        return value
    if t is float:
        if math.isfinite(value):
            return value
        return {_T_FLOAT: repr(value)}
    if t is int:
        if _INT64_MIN <= value <= _UINT64_MAX:
            return value
        return {_T_INT: str(value)}
    if t is dict:
        return _encode_dict(value, buffers)
    if t is list:
        return [encode_value(v, buffers) for v in value]
    if t is tuple:
        return {_T_TUPLE: [encode_value(v, buffers) for v in value]}
    if isinstance(value, np.generic):
        if value.dtype.kind in _ARRAY_KINDS:
            buffers.append(np.asarray(value))
            return {_T_SCALAR: len(buffers) - 1}
        return _repr(value)
    if t is GraphInstance:
        return {_T_GRAPH: [encode_value(v, buffers) for v in value]}
    # Subclasses of the builtins (OrderedDict, IntEnum, namedtuples ...).
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, np.ndarray):
        return _encode_array(np.asarray(value), buffers)
    if isinstance(value, dict):
        return _encode_dict(value, buffers)
    if isinstance(value, tuple):
        return {_T_TUPLE: [encode_value(v, buffers) for v in value]}
    if isinstance(value, list):
        return [encode_value(v, buffers) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        buffers.append(np.frombuffer(bytes(value), dtype=np.uint8))
        return {_T_BYTES: len(buffers) - 1}
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return encode_value(int(value), buffers)
    if isinstance(value, float):
        return encode_value(float(value), buffers)
    return _repr(value)


def unencodable(value: Any, _depth: int = 0) -> str | None:
    """The type name of the first part of ``value`` that would be sent as its ``repr()``, or None."""
    if _depth > MAX_DEPTH:
        return "structure nested too deep"
    t = type(value)
    if value is None or t in (str, bool, int, float, bytes, bytearray, memoryview):
        return None
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "O":
            return next((b for b in (unencodable(v, _depth + 1) for v in value.reshape(-1)) if b), None)
        return None if value.dtype.kind in _ARRAY_KINDS else f"array of dtype {value.dtype}"
    if isinstance(value, np.generic):
        return None if value.dtype.kind in _ARRAY_KINDS else f"numpy {type(value).__name__}"
    if isinstance(value, dict):
        items: Any = [x for kv in value.items() for x in kv]
    elif isinstance(value, (list, tuple, GraphInstance)):
        items = value
    elif isinstance(value, (str, int, float)):
        return None
    else:
        return f"{t.__module__}.{t.__qualname__}"
    return next((b for b in (unencodable(v, _depth + 1) for v in items) if b), None)


def _repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_REPR else text[: MAX_REPR - 3] + "..."


def _encode_array(arr: np.ndarray[Any, Any], buffers: list[np.ndarray[Any, Any]]) -> Any:
    kind = arr.dtype.kind
    if kind in _ARRAY_KINDS:
        buffers.append(arr)
        return {_T_ARRAY: len(buffers) - 1}
    if kind == "O":
        flat = [encode_value(v, buffers) for v in arr.reshape(-1)]
        return {_T_OBJARRAY: [list(arr.shape), flat]}
    # Structured or void dtypes: documented repr fallback.
    return _repr(arr)


def _encode_dict(value: dict[Any, Any], buffers: list[np.ndarray[Any, Any]]) -> Any:
    plain = True
    for k in value:
        if type(k) is not str:
            plain = False
            break
    if plain and not (len(value) == 1 and next(iter(value)) in _TAGS):
        return {k: encode_value(v, buffers) for k, v in value.items()}
    return {_T_DICT: [[encode_value(k, buffers), encode_value(v, buffers)] for k, v in value.items()]}


class Decoder:
    """Decodes the trees of one frame, checking that each buffer is used exactly once.

    Args:
        arrays: The frame's buffers, already viewed as arrays.
    """

    __slots__ = ("_arrays", "_used")

    def __init__(self, arrays: list[np.ndarray[Any, Any]]) -> None:
        self._arrays = arrays
        self._used = 0

    def value(self, tree: Any) -> Any:
        """Rebuild a value encoded by :func:`encode_value`.

        Raises:
            ValueError: Malformed: a bad tag, a missing or reused buffer, too deep.
        """
        return self._value(tree, 0)

    def finish(self) -> None:
        """Check that every buffer of the frame was used.

        Raises:
            ValueError: Some buffer was never referenced.
        """
        if self._used != len(self._arrays):
            raise ValueError(f"{len(self._arrays) - self._used} buffer(s) of the frame are never used")

    def buffer(self, index: Any) -> np.ndarray[Any, Any]:
        """Take buffer ``index``; each one can be taken once.

        Raises:
            ValueError: No such buffer, or it was taken before.
        """
        arrays = self._arrays
        if type(index) is not int or not 0 <= index < len(arrays):
            raise ValueError(f"reference to a missing buffer {index!r}")
        arr = arrays[index]
        if arr is None:
            raise ValueError(f"buffer {index} is referenced twice")
        arrays[index] = None  # type: ignore[call-overload]  # a used buffer is marked so (the list is the decoder's own)
        self._used += 1
        return arr

    def _value(self, tree: Any, depth: int) -> Any:
        t = type(tree)
        if t is dict:
            if depth >= MAX_DEPTH:
                raise ValueError(f"value nested deeper than {MAX_DEPTH} levels")
            if len(tree) == 1:
                key = next(iter(tree))
                if key in _TAGS:
                    return self._tagged(key, tree[key], depth + 1)
            depth += 1
            return {k: v if type(v) not in _NODES else self._value(v, depth) for k, v in tree.items()}
        if t is list:
            return self._list(tree, depth)
        return tree

    def _list(self, body: Any, depth: int) -> list[Any]:
        if type(body) is not list:
            raise ValueError(f"malformed tag body {type(body).__name__}")
        if depth >= MAX_DEPTH:
            raise ValueError(f"value nested deeper than {MAX_DEPTH} levels")
        depth += 1
        # Leaves (numbers, strings, bools, null) are taken as they are, without a call.
        return [v if type(v) not in _NODES else self._value(v, depth) for v in body]

    def _tagged(self, tag: str, body: Any, depth: int) -> Any:
        if tag == _T_ARRAY:
            return self.buffer(body)
        if tag == _T_SCALAR:
            arr = self.buffer(body)
            if arr.ndim != 0:
                raise ValueError("a numpy scalar must be a 0-d buffer")
            return arr[()]
        if tag == _T_TUPLE:
            return tuple(self._list(body, depth))
        if tag == _T_FLOAT:
            if type(body) is not str or body not in _FLOATS:
                raise ValueError(f"bad float tag {body!r:.40}")
            return _FLOATS[body]
        if tag == _T_INT:
            if type(body) is not str:
                raise ValueError("bad int tag")
            return int(body)  # Python refuses more than 4300 digits
        if tag == _T_BYTES:
            return self.buffer(body).tobytes()
        if tag == _T_DICT:
            if type(body) is not list:
                raise ValueError("malformed dict tag")
            out = {}
            for pair in body:
                if type(pair) is not list or len(pair) != 2:
                    raise ValueError("malformed dict tag")
                out[self._value(pair[0], depth)] = self._value(pair[1], depth)
            return out
        if tag == _T_GRAPH:
            parts = self._list(body, depth)
            if len(parts) != 3:
                raise ValueError("a graph instance has nodes, edges and edge links")
            return GraphInstance(*parts)
        # _T_OBJARRAY
        if type(body) is not list or len(body) != 2 or type(body[0]) is not list:
            raise ValueError("malformed object array tag")
        shape, flat = body
        items = self._list(flat, depth)
        out_arr = np.empty(len(items), dtype=object)
        for i, v in enumerate(items):
            out_arr[i] = v
        return out_arr.reshape(shape)
