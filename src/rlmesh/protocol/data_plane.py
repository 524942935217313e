"""The shared-memory data plane's layout: where each fixed-shape array of a reply lives in a region.

On one host, a STEP or RESET reply's bulk arrays need not cross the socket: the host creates a
memory region sized from the spaces agreed at the handshake and hands it to the server, which
writes the observations (and a vector env's rewards, terminations and truncations) in place;
the reply frame then carries ``None`` at each such position, and everything else (infos, and
leaves of other kinds) as usual.

Both sides compute the same :class:`Layout` from the same spaces, each on its own: nothing
about the structure (lengths, offsets, dtypes, shapes) is ever read from the region, and its
size is checked by each side against its own layout. A server scribbling on the region can make
wrong numbers, never a crash, an over-read or an allocation.

Which leaves take the region: Box, MultiDiscrete and MultiBinary arrays (a vector env's
Discrete batch is a MultiDiscrete), and Dict and Tuple of them. A single env's Discrete (a
scalar) and Text, Sequence, Graph, OneOf and custom-space leaves stay on the socket. A value is
written only when it is an array of exactly the leaf's dtype and shape; any other value of a
leaf travels inline, leaf by leaf, so the result is always the env's own value.

The region is handed over by the MAP exchange (feature ``shm1``; the client's side is
:mod:`.handover`, ``docs/protocol.md`` specifies it). The client writes its probe at offset 0
before sending the descriptor; the server writes the probe it was sent, reversed, at offset 16,
before it answers: each side proves the other's writes reach it (a gVisor sandbox, which cannot
share the host's memory, fails here, and the socket stays). Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

__all__ = ["DEFAULT_MAX_REGION_SIZE", "FEATURE", "PROBE_SIZE", "Layout", "Leaf"]

FEATURE = "shm1"
"""The feature a server names in its HELLO when it accepts a region (``MAP``)."""
PROBE_SIZE = 16
"""Bytes of each side's probe; the first ``2 * PROBE_SIZE`` bytes of a region are the probes'."""
DEFAULT_MAX_REGION_SIZE = 64 << 20
"""The largest region a host creates for one connection unless told otherwise (``max_region_size=``):
a layout larger than this uses the socket. The host pays for the region (the sandbox's memory
limit does not apply to it), so a server's spaces alone never make it allocate more."""
_ALIGN = 64
_MAX_LEAVES = 4096


@dataclass(frozen=True, slots=True)
class Leaf:
    """One array of a reply in the region.

    Attributes:
        path: Keys and indices from the observation down to the array (``()`` for the
            observation itself); ``("reward",)``, ``("terminated",)``, ``("truncated",)`` for a
            vector env's flags, which are outside the observation.
        shape: The array's shape.
        dtype: The array's dtype.
        offset: Where it starts in the region (aligned to 64 bytes).
        index: Its place in :attr:`Layout.leaves` (and in the list :meth:`Layout.views` returns).
    """

    path: tuple[Any, ...]
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    offset: int
    index: int

    @property
    def count(self) -> int:
        """The array's number of items (Python ints: a shape from a peer never wraps)."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """The array's size in bytes."""
        return self.count * self.dtype.itemsize


class Layout:
    """Where each fixed-shape array of a STEP or RESET reply lives in the region.

    Args:
        observation_space: The observation space from the handshake (batched for vector envs).
        num_envs: The number of lanes (vector envs), else None.
        max_size: The largest region allowed (bytes); None: no cap (a server checks the size a
            client offers against its own layout, and maps nothing larger than that).

    Raises:
        ValueError: More than 4096 arrays, or a leaf or the whole region larger than ``max_size``.
    """

    def __init__(self, observation_space: spaces.Space[Any], num_envs: int | None, max_size: int | None = None) -> None:
        self.num_envs = num_envs
        self._max_size = max_size
        self.space = observation_space
        self._at = 2 * PROBE_SIZE
        self.leaves: list[Leaf] = []
        self.obs = self._plan(observation_space, (), 0)
        self.flags: tuple[Leaf, Leaf, Leaf] | None = None
        if num_envs is not None and self.leaves:
            reward = self._leaf(("reward",), (num_envs,), np.dtype(np.float64))
            terminated = self._leaf(("terminated",), (num_envs,), np.dtype(np.bool_))
            truncated = self._leaf(("truncated",), (num_envs,), np.dtype(np.bool_))
            self.flags = (reward, terminated, truncated)
        self.size = self._at + (-self._at % 4096) if self.leaves else 0
        if max_size is not None and self.size > max_size:
            raise ValueError(f"the spaces' arrays need {self.size} bytes, more than {max_size}")

    def _leaf(self, path: tuple[Any, ...], shape: tuple[int, ...], dtype: np.dtype[Any]) -> Leaf:
        if len(self.leaves) >= _MAX_LEAVES:
            raise ValueError(f"more than {_MAX_LEAVES} arrays in an observation")
        self._at += -self._at % _ALIGN
        leaf = Leaf(path, shape, dtype, self._at, len(self.leaves))
        self.leaves.append(leaf)
        self._at += leaf.nbytes
        if self._max_size is not None and self._at > self._max_size:
            raise ValueError(f"the spaces' arrays need more than {self._max_size} bytes "
                             f"(at {'/'.join(map(str, path)) or 'the observation'}: shape {shape}, {dtype})")
        return leaf

    def _plan(self, space: spaces.Space[Any], path: tuple[Any, ...], depth: int) -> Any:
        """A plan mirroring the space: a Leaf, a dict or tuple of plans, or None (socket)."""
        if depth > 32:
            return None
        if type(space) in (spaces.Box, spaces.MultiDiscrete, spaces.MultiBinary):
            shape = tuple(int(d) for d in space.shape or ())
            dtype = np.dtype(space.dtype)
            if dtype.kind in "biuf" and shape:
                return self._leaf(path, shape, dtype)
            return None
        if type(space) is spaces.Dict:
            assert isinstance(space, spaces.Dict)
            # Keys in one canonical order: the env's Dict may keep insertion order (an OrderedDict)
            # while the client's, rebuilt from the handshake, is sorted; both must place alike.
            keys = sorted(space.spaces) if all(type(k) is str for k in space.spaces) else list(space.spaces)
            plan = {k: self._plan(space.spaces[k], (*path, k), depth + 1) for k in keys}
            return plan if any(v is not None for v in plan.values()) else None
        if type(space) is spaces.Tuple:
            assert isinstance(space, spaces.Tuple)
            items = tuple(self._plan(s, (*path, i), depth + 1) for i, s in enumerate(space.spaces))
            return items if any(v is not None for v in items) else None
        return None

    def fingerprint(self) -> str:
        """A digest of every leaf's path, shape, dtype and offset: the two sides' layouts must agree
        on all of it, not only on the size."""
        digest = hashlib.sha256()
        for leaf in self.leaves:
            digest.update(repr((leaf.path, leaf.shape, leaf.dtype.str, leaf.offset)).encode())
        return digest.hexdigest()[:32]

    def views(self, buffer: Any) -> list[np.ndarray[Any, Any]]:
        """Each leaf's array over ``buffer`` (a region of exactly :attr:`size` bytes), in leaf order."""
        return [np.frombuffer(buffer, dtype=leaf.dtype, count=leaf.count, offset=leaf.offset).reshape(leaf.shape)
                for leaf in self.leaves]

    # -- the server's side -----------------------------------------------------------
    def place(self, value: Any, views: list[np.ndarray[Any, Any]]) -> Any:
        """Write each leaf of an observation that fits into the region; returns the observation
        with ``None`` where a leaf was written (the rest unchanged)."""
        return _place(self.obs, value, views)

    def place_flags(self, result: tuple[Any, ...], views: list[np.ndarray[Any, Any]]) -> tuple[Any, ...]:
        """A vector env's STEP result with its observation, rewards, terminations and truncations
        written where they fit."""
        obs, reward, terminated, truncated, info = result
        out = [self.place(obs, views), reward, terminated, truncated]
        if self.flags is not None:
            for i, leaf in enumerate(self.flags, 1):
                out[i] = _write(leaf, out[i], views)
        return (*out, info)

    # -- the client's side -----------------------------------------------------------
    def fill(self, value: Any, views: list[np.ndarray[Any, Any]], copy: bool) -> Any:
        """The observation with each ``None`` at a leaf replaced by the region's array (a private
        copy when ``copy``, else a view the next reply overwrites)."""
        return _fill(self.obs, value, views, copy)

    def fill_flags(self, body: tuple[Any, ...], views: list[np.ndarray[Any, Any]], copy: bool) -> tuple[Any, ...]:
        """A vector env's STEP reply with its observation and flags filled in."""
        if len(body) != 5:
            return body
        out = [self.fill(body[0], views, copy), *body[1:4]]
        if self.flags is not None:
            for i, leaf in enumerate(self.flags, 1):
                if out[i] is None:
                    out[i] = np.array(views[leaf.index]) if copy else views[leaf.index]
        return (*out, body[4])


def _write(leaf: Leaf, value: Any, views: list[np.ndarray[Any, Any]]) -> Any:
    if type(value) is np.ndarray and value.dtype == leaf.dtype and value.shape == leaf.shape:
        np.copyto(views[leaf.index], value, casting="no")
        return None
    return value


def _place(plan: Any, value: Any, views: list[np.ndarray[Any, Any]]) -> Any:
    if plan is None:
        return value
    if type(plan) is Leaf:
        return _write(plan, value, views)
    if type(plan) is dict:
        if type(value) is not dict or value.keys() != plan.keys():
            return value
        return {k: _place(plan[k], v, views) for k, v in value.items()}
    if type(value) is not tuple or len(value) != len(plan):
        return value
    return tuple(_place(p, v, views) for p, v in zip(plan, value, strict=True))


def _fill(plan: Any, value: Any, views: list[np.ndarray[Any, Any]], copy: bool) -> Any:
    if plan is None:
        return value
    if type(plan) is Leaf:
        if value is None:
            return np.array(views[plan.index]) if copy else views[plan.index]
        return value
    if type(plan) is dict:
        if type(value) is not dict:
            return value
        return {k: _fill(plan.get(k), v, views, copy) for k, v in value.items()}
    if type(value) is not tuple or len(value) != len(plan):
        return value
    return tuple(_fill(p, v, views, copy) for p, v in zip(plan, value, strict=True))
