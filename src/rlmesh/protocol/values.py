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
* Anything else is replaced by its ``repr()`` string. This never raises, so
  an exotic object in an info dict cannot break a step.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium.spaces import GraphInstance

__all__ = ["BufferMeta", "decode_value", "encode_value"]

# A buffer is described by (dtype.str, shape) in the header.
BufferMeta = tuple[str, tuple[int, ...]]

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
        return repr(value)
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
    return repr(value)


def _encode_array(arr: np.ndarray[Any, Any], buffers: list[np.ndarray[Any, Any]]) -> Any:
    kind = arr.dtype.kind
    if kind in _ARRAY_KINDS:
        buffers.append(arr)
        return {_T_ARRAY: len(buffers) - 1}
    if kind == "O":
        flat = [encode_value(v, buffers) for v in arr.reshape(-1)]
        return {_T_OBJARRAY: [list(arr.shape), flat]}
    # Structured or void dtypes: documented repr fallback.
    return repr(arr)


def _encode_dict(value: dict[Any, Any], buffers: list[np.ndarray[Any, Any]]) -> Any:
    plain = True
    for k in value:
        if type(k) is not str:
            plain = False
            break
    if plain and not (len(value) == 1 and next(iter(value)) in _TAGS):
        return {k: encode_value(v, buffers) for k, v in value.items()}
    return {_T_DICT: [[encode_value(k, buffers), encode_value(v, buffers)] for k, v in value.items()]}


def decode_value(tree: Any, arrays: list[np.ndarray[Any, Any]]) -> Any:
    """Rebuild a value encoded by :func:`encode_value`.

    Args:
        tree: The decoded JSON tree.
        arrays: The frame's buffers, already viewed as arrays.

    Returns:
        The original value.

    Raises:
        ValueError: The tree refers to a missing buffer or has a malformed tag.
    """
    t = type(tree)
    if t is dict:
        if len(tree) == 1:
            key = next(iter(tree))
            if key in _TAGS:
                return _decode_tagged(key, tree[key], arrays)
        return {k: decode_value(v, arrays) for k, v in tree.items()}
    if t is list:
        return [decode_value(v, arrays) for v in tree]
    return tree


def _decode_tagged(tag: str, body: Any, arrays: list[np.ndarray[Any, Any]]) -> Any:
    if tag == _T_ARRAY:
        return arrays[body]
    if tag == _T_SCALAR:
        return arrays[body][()]
    if tag == _T_TUPLE:
        return tuple(decode_value(v, arrays) for v in body)
    if tag == _T_FLOAT:
        if body not in ("nan", "inf", "-inf"):
            raise ValueError(f"bad float tag {body!r}")
        return float(body)
    if tag == _T_INT:
        return int(body)
    if tag == _T_BYTES:
        return arrays[body].tobytes()
    if tag == _T_DICT:
        return {decode_value(k, arrays): decode_value(v, arrays) for k, v in body}
    if tag == _T_GRAPH:
        nodes, edges, links = (decode_value(v, arrays) for v in body)
        return GraphInstance(nodes, edges, links)
    # _T_OBJARRAY
    shape, flat = body
    out = np.empty(len(flat), dtype=object)
    for i, v in enumerate(flat):
        out[i] = decode_value(v, arrays)
    return out.reshape(shape)
