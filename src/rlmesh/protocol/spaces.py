"""Space codec: Gymnasium spaces to a JSON description and back.

Every built-in Gymnasium space is supported, nested arbitrarily: Box, Discrete,
MultiDiscrete, MultiBinary, Text, Dict, Tuple, Sequence, Graph and OneOf. Any other space
(a custom ``Space`` subclass) crosses as an :class:`OpaqueSpace`.
Bounds and ``nvec`` travel as raw buffers, so extreme values (``inf``, the
int64/uint64 limits, float16) survive exactly and the rebuilt space compares
equal to the original.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
from gymnasium import spaces

from ..errors import UnsupportedSpaceError
from .values import MAX_DEPTH, Decoder, encode_value

__all__ = ["OpaqueSpace", "decode_space", "encode_space", "make_discrete", "opaque_spaces", "space_at"]


def encode_space(space: spaces.Space[Any], buffers: list[np.ndarray[Any, Any]]) -> dict[str, Any]:
    """Describe ``space`` (and the state of its generator, once seeded) as a JSON tree.

    Args:
        space: A Gymnasium space.
        buffers: Receives the bound arrays.

    Returns:
        The description.

    """
    desc = _describe(space, buffers)
    rng = getattr(space, "_np_random", None)
    if isinstance(rng, np.random.Generator):
        # Plain data (the bit generator's name and state), so seeded samples match in process.
        desc["rng"] = encode_value(rng.bit_generator.state, buffers)
    return desc


def _describe(space: spaces.Space[Any], buffers: list[np.ndarray[Any, Any]]) -> dict[str, Any]:
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
    # A space rlmesh cannot rebuild (a custom Space subclass): described by its shape and
    # dtype, and left to the server to sample and judge (see OpaqueSpace).
    shape = getattr(space, "shape", None)
    dtype = getattr(space, "dtype", None)
    return {
        "type": "Opaque",
        "class": f"{t.__module__}.{t.__qualname__}"[:200],
        "repr": repr(space)[:500],
        "shape": list(shape) if isinstance(shape, tuple) and all(type(d) is int for d in shape) else None,
        "dtype": np.dtype(dtype).str if dtype is not None and np.dtype(dtype).kind in "biufcSUMm" else None,
    }


class OpaqueSpace(spaces.Space[Any]):
    """A space the host cannot rebuild (a custom ``Space`` subclass of the env's).

    It has the original's ``shape`` and ``dtype`` (when they are plain), its class name and
    ``repr`` as text, and its ``sample()``, ``contains()`` and ``seed()`` are answered by the
    server (the sync classes ask it; an unconnected or async space raises, naming what to do).
    Gymnasium batches it as it batches any custom space: a ``Tuple`` of one per lane.

    Attributes:
        type_name: The qualified name of the env's space class.
        text: The env's ``repr()`` of its space.
    """

    def __init__(self, type_name: str, text: str, shape: tuple[int, ...] | None, dtype: Any) -> None:
        super().__init__(shape, dtype)
        self.type_name = type_name
        self.text = text
        self.ask: Any = None  # set by the client: (path, method, *args) -> result
        self.path: tuple[Any, ...] = ()

    def _remote(self, method: str, *args: Any) -> Any:
        if self.ask is None:
            raise UnsupportedSpaceError(
                f"{self!r} is answered by the env's server, and this space is not bound to a connection"
            )
        return self.ask(self.path, method, *args)

    def sample(self, mask: Any = None, probability: Any = None) -> Any:
        """A sample drawn by the server's space."""
        return self._remote("sample")

    def contains(self, x: Any) -> bool:
        """Whether the server's space contains ``x``."""
        return bool(self._remote("contains", x))

    def seed(self, seed: int | None = None) -> Any:
        """Seed the server's space."""
        return self._remote("seed", seed)

    @property
    def is_np_flattenable(self) -> bool:
        """Never: the host does not know its structure."""
        return False

    def __repr__(self) -> str:
        return f"OpaqueSpace({self.type_name}: {self.text})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OpaqueSpace) and (self.type_name, self.text) == (other.type_name, other.text)

    __hash__ = None  # type: ignore[assignment]  # unhashable, as Gymnasium's spaces with __eq__


def opaque_spaces(space: spaces.Space[Any], path: tuple[Any, ...] = ()) -> list[OpaqueSpace]:
    """Every :class:`OpaqueSpace` in ``space``, with its ``path`` (keys and indices) filled in."""
    if isinstance(space, OpaqueSpace):
        space.path = path
        return [space]
    found: list[OpaqueSpace] = []
    if isinstance(space, spaces.Dict):
        for key, sub in space.spaces.items():
            found += opaque_spaces(sub, (*path, key))
    elif isinstance(space, (spaces.Tuple, spaces.OneOf)):
        for i, sub in enumerate(space.spaces):
            found += opaque_spaces(sub, (*path, i))
    elif isinstance(space, spaces.Sequence):
        found += opaque_spaces(space.feature_space, (*path, "feature_space"))
    return found


def space_at(space: spaces.Space[Any], path: list[Any]) -> spaces.Space[Any]:
    """The sub-space of ``space`` at ``path`` (server side of :class:`OpaqueSpace`).

    Raises:
        ValueError: The path does not lead to a sub-space.
    """
    for step in path:
        if isinstance(space, spaces.Dict) and type(step) is str and step in space.spaces:
            space = space.spaces[step]
        elif isinstance(space, (spaces.Tuple, spaces.OneOf)) and type(step) is int and 0 <= step < len(space.spaces):
            space = space.spaces[step]
        elif isinstance(space, spaces.Sequence) and step == "feature_space":
            space = space.feature_space
        else:
            raise ValueError(f"no sub-space {step!r:.40} in {type(space).__name__}")
    return space


def decode_space(desc: Any, decoder: Decoder, _depth: int = 0) -> spaces.Space[Any]:
    """Rebuild a space described by :func:`encode_space`.

    The description comes from the peer, so its shape is checked at every level.

    Args:
        desc: The description.
        decoder: The frame's decoder (it hands out the bound buffers).

    Returns:
        A space equal to the described one.

    Raises:
        UnsupportedSpaceError: The description names an unknown space type.
        ValueError: The description is malformed.
    """
    if type(desc) is not dict:
        raise ValueError(f"a space description must be an object, got {type(desc).__name__}")
    space = _rebuild(desc, decoder, _depth)
    if "rng" in desc:
        space._np_random = _generator(decoder.value(desc["rng"]))
    return space


# Bit generators a peer may name; nothing else is looked up (and nothing is imported).
_BIT_GENERATORS = {"PCG64": np.random.PCG64, "PCG64DXSM": np.random.PCG64DXSM, "MT19937": np.random.MT19937,
                   "Philox": np.random.Philox, "SFC64": np.random.SFC64}


def _generator(state: Any) -> np.random.Generator:
    if type(state) is not dict or state.get("bit_generator") not in _BIT_GENERATORS:
        raise ValueError("a space's generator state must name a known bit generator")
    bit_generator = _BIT_GENERATORS[state["bit_generator"]]()
    bit_generator.state = state  # numpy checks the rest
    return np.random.Generator(bit_generator)


def _rebuild(desc: dict[str, Any], decoder: Decoder, _depth: int) -> spaces.Space[Any]:
    if _depth > MAX_DEPTH:
        raise ValueError(f"space nested deeper than {MAX_DEPTH} levels")
    kind = desc.get("type")
    depth = _depth + 1

    def sub(name: str) -> spaces.Space[Any]:
        return decode_space(desc[name], decoder, depth)

    def subs(name: str) -> list[Any]:
        items = desc[name]
        if type(items) is not list:
            raise ValueError(f"{kind}.{name} must be a list")
        return items

    if kind == "Box":
        low = np.asarray(decoder.value(desc["low"]))
        high = np.asarray(decoder.value(desc["high"]))
        if low.dtype.kind not in "biuf" or low.dtype != high.dtype:
            raise ValueError("Box bounds must be numeric arrays of one dtype")
        return spaces.Box(low=low, high=high, dtype=low.dtype)
    if kind == "Discrete":
        return make_discrete(_int(desc["n"]), start=_int(desc["start"]), dtype=_dtype(desc["dtype"]))
    if kind == "MultiDiscrete":
        nvec = np.asarray(decoder.value(desc["nvec"]))
        start = np.asarray(decoder.value(desc["start"]))
        if nvec.dtype.kind not in "iu" or start.dtype != nvec.dtype:
            raise ValueError("MultiDiscrete nvec and start must be integer arrays of one dtype")
        return spaces.MultiDiscrete(nvec, dtype=nvec.dtype, start=start)
    if kind == "MultiBinary":
        n = desc["n"]
        return spaces.MultiBinary(tuple(_int(d) for d in n) if type(n) is list else _int(n))
    if kind == "Text":
        charset = desc["charset"]
        if type(charset) is not str:
            raise ValueError("Text charset must be a string")
        return spaces.Text(_int(desc["max_length"]), min_length=_int(desc["min_length"]), charset=charset)
    if kind == "Dict":
        items = subs("spaces")
        if not all(type(p) is list and len(p) == 2 and type(p[0]) is str for p in items):
            raise ValueError("Dict spaces must be [name, space] pairs")
        return spaces.Dict({k: decode_space(s, decoder, depth) for k, s in items})
    if kind == "Tuple":
        return spaces.Tuple([decode_space(s, decoder, depth) for s in subs("spaces")])
    if kind == "Sequence":
        return spaces.Sequence(sub("space"), stack=desc["stack"] is True)
    if kind == "OneOf":
        return spaces.OneOf([decode_space(s, decoder, depth) for s in subs("spaces")])
    if kind == "Graph":
        edge = desc["edge_space"]
        node_space = sub("node_space")
        edge_space = None if edge is None else sub("edge_space")
        if not isinstance(node_space, (spaces.Box, spaces.Discrete)) or not (
            edge_space is None or isinstance(edge_space, (spaces.Box, spaces.Discrete))
        ):
            raise ValueError("Graph node and edge spaces must be Box or Discrete")
        return spaces.Graph(node_space=node_space, edge_space=edge_space)
    if kind == "Opaque":
        type_name, text, shape, dtype = desc.get("class"), desc.get("repr"), desc.get("shape"), desc.get("dtype")
        if type(type_name) is not str or type(text) is not str or len(type_name) > 200 or len(text) > 500:
            raise ValueError("malformed opaque space")
        return OpaqueSpace(type_name, text, None if shape is None else tuple(_int(d) for d in shape),
                           None if dtype is None else _dtype(dtype, "biufcSUMm", "an opaque space's dtype must be plain", 12))
    raise UnsupportedSpaceError(f"unknown space type {kind!r:.60} in a space description")


def _int(value: Any) -> int:
    if type(value) is not int:
        raise ValueError(f"expected an integer, got {type(value).__name__}")
    return value


_DISCRETE_HAS_DTYPE = "dtype" in inspect.signature(spaces.Discrete.__init__).parameters


def make_discrete(n: int, *, start: int = 0, dtype: Any = np.int64) -> spaces.Discrete:
    """``Discrete(n, start=start, dtype=dtype)`` on every supported Gymnasium.

    Gymnasium 1.1 has no ``dtype`` argument (its Discrete is always int64), while a server on a
    newer Gymnasium may declare another: there the space takes the declared dtype afterwards, so
    it describes the values that really arrive (samples, ``contains``) as on the server's side.
    """
    if _DISCRETE_HAS_DTYPE:
        return spaces.Discrete(n, start=start, dtype=dtype)
    space = spaces.Discrete(n, start=start)
    kind = np.dtype(dtype)
    if kind != space.dtype:
        space.dtype, space.n, space.start = kind, kind.type(n), kind.type(start)
    return space


def _dtype(text: Any, kinds: str = "iu", what: str = "Discrete dtype must be an integer type",
           max_len: int = 8) -> np.dtype[Any]:
    """A dtype from a space description: a string of at most ``max_len`` naming one of ``kinds``."""
    if type(text) is not str or len(text) > max_len:
        raise ValueError("malformed dtype")
    dtype = np.dtype(text)
    if dtype.kind not in kinds:
        raise ValueError(f"{what}, got {dtype}")
    return dtype
