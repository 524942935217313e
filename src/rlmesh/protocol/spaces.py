"""Space codec: Gymnasium spaces to a JSON description and back.

Every built-in Gymnasium space is supported, nested arbitrarily: Box, Discrete,
MultiDiscrete, MultiBinary, Text, Dict, Tuple, Sequence, Graph and OneOf.
Bounds and ``nvec`` travel as raw buffers, so extreme values (``inf``, the
int64/uint64 limits, float16) survive exactly and the rebuilt space compares
equal to the original. A custom ``Space`` subclass raises
:class:`~rlmesh.errors.UnsupportedSpaceError` naming it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from ..errors import UnsupportedSpaceError
from .values import decode_value, encode_value

__all__ = ["decode_space", "encode_space"]


def encode_space(space: spaces.Space[Any], buffers: list[np.ndarray[Any, Any]]) -> dict[str, Any]:
    """Describe ``space`` as a JSON tree whose arrays are appended to ``buffers``.

    Args:
        space: A Gymnasium space.
        buffers: Receives the bound arrays.

    Returns:
        The description.

    Raises:
        UnsupportedSpaceError: ``space`` is not a built-in Gymnasium space.
    """
    t = type(space)
    enc = encode_value
    if t is spaces.Box:
        assert isinstance(space, spaces.Box)
        return {"type": "Box", "low": enc(space.low, buffers), "high": enc(space.high, buffers)}
    if t is spaces.Discrete:
        assert isinstance(space, spaces.Discrete)
        return {
            "type": "Discrete",
            "n": int(space.n),
            "start": int(space.start),
            "dtype": np.dtype(space.dtype).str,
        }
    if t is spaces.MultiDiscrete:
        assert isinstance(space, spaces.MultiDiscrete)
        return {
            "type": "MultiDiscrete",
            "nvec": enc(space.nvec, buffers),
            "start": enc(space.start, buffers),
        }
    if t is spaces.MultiBinary:
        assert isinstance(space, spaces.MultiBinary)
        n = space.n
        return {"type": "MultiBinary", "n": list(n) if isinstance(n, tuple) else int(n)}
    if t is spaces.Text:
        assert isinstance(space, spaces.Text)
        return {
            "type": "Text",
            "min_length": space.min_length,
            "max_length": space.max_length,
            "charset": "".join(space.character_list),
        }
    if t is spaces.Dict:
        assert isinstance(space, spaces.Dict)
        return {
            "type": "Dict",
            "spaces": [[k, encode_space(s, buffers)] for k, s in space.spaces.items()],
        }
    if t is spaces.Tuple:
        assert isinstance(space, spaces.Tuple)
        return {"type": "Tuple", "spaces": [encode_space(s, buffers) for s in space.spaces]}
    if t is spaces.Sequence:
        assert isinstance(space, spaces.Sequence)
        return {
            "type": "Sequence",
            "space": encode_space(space.feature_space, buffers),
            "stack": bool(space.stack),
        }
    if t is spaces.OneOf:
        assert isinstance(space, spaces.OneOf)
        return {"type": "OneOf", "spaces": [encode_space(s, buffers) for s in space.spaces]}
    if t is spaces.Graph:
        assert isinstance(space, spaces.Graph)
        edge = space.edge_space
        return {
            "type": "Graph",
            "node_space": encode_space(space.node_space, buffers),
            "edge_space": None if edge is None else encode_space(edge, buffers),
        }
    raise UnsupportedSpaceError(
        f"rlmesh cannot describe the space {space!r} (type {t.__module__}.{t.__qualname__}): "
        "only Gymnasium's built-in spaces (Box, Discrete, MultiDiscrete, MultiBinary, Text, "
        "Dict, Tuple, Sequence, Graph, OneOf) can cross the wire. Wrap the env so that it "
        "exposes one of those."
    )


def decode_space(desc: dict[str, Any], arrays: list[np.ndarray[Any, Any]]) -> spaces.Space[Any]:
    """Rebuild a space described by :func:`encode_space`.

    Args:
        desc: The description.
        arrays: The frame's buffers.

    Returns:
        A space equal to the described one.

    Raises:
        UnsupportedSpaceError: The description names an unknown space type.
    """
    kind = desc.get("type")
    dec = decode_value
    if kind == "Box":
        low = np.array(dec(desc["low"], arrays))
        high = np.array(dec(desc["high"], arrays))
        return spaces.Box(low=low, high=high, dtype=low.dtype)
    if kind == "Discrete":
        return spaces.Discrete(int(desc["n"]), start=int(desc["start"]), dtype=np.dtype(desc["dtype"]))
    if kind == "MultiDiscrete":
        nvec = np.array(dec(desc["nvec"], arrays))
        start = np.array(dec(desc["start"], arrays))
        return spaces.MultiDiscrete(nvec, dtype=nvec.dtype, start=start)
    if kind == "MultiBinary":
        n = desc["n"]
        return spaces.MultiBinary(tuple(n) if isinstance(n, list) else int(n))
    if kind == "Text":
        return spaces.Text(
            desc["max_length"], min_length=desc["min_length"], charset=desc["charset"]
        )
    if kind == "Dict":
        return spaces.Dict({k: decode_space(s, arrays) for k, s in desc["spaces"]})
    if kind == "Tuple":
        return spaces.Tuple([decode_space(s, arrays) for s in desc["spaces"]])
    if kind == "Sequence":
        return spaces.Sequence(decode_space(desc["space"], arrays), stack=bool(desc["stack"]))
    if kind == "OneOf":
        return spaces.OneOf([decode_space(s, arrays) for s in desc["spaces"]])
    if kind == "Graph":
        edge = desc["edge_space"]
        node_space = decode_space(desc["node_space"], arrays)
        edge_space = None if edge is None else decode_space(edge, arrays)
        return spaces.Graph(node_space=node_space, edge_space=edge_space)
    raise UnsupportedSpaceError(f"unknown space type {kind!r} in a space description")
