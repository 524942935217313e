"""The largest legitimate STEP or RESET reply, computed from the spaces agreed at the handshake.

A client must not let a hostile server make it allocate more than the env could ever need: the
frame limit a client offers in its HELLO (``max_frame_size``, 1 GiB by default) is a ceiling,
not a budget. Once the server's HELLO has named the spaces, :func:`reply_bound` says how big a
STEP or RESET reply can be, and the client refuses any larger one on its 16 header bytes,
before it reads (or allocates) the body.

The bound is an upper bound on the whole frame (header, JSON and padded buffers):

* every fixed-shape leaf (Box, Discrete, MultiDiscrete, MultiBinary, and Text, whose length is
  bounded) at its exact size plus a fixed overhead for its JSON and buffer-table entry; a single
  env's numeric leaves count at least 8 bytes an item (an env may return float64 for a float32
  Box; vector envs batch into the space's own dtype);
* Sequence, Graph and OpaqueSpace leaves, whose size the spaces do not bound, share
  ``max_variable_size`` bytes;
* rewards, terminations and truncations; with ``SameStep`` autoreset, the final observations
  of every lane (``info["final_obs"]``);
* ``max_info_size`` bytes for the info dict.

RENDER and CALL replies are not bounded by the spaces: they keep ``max_frame_size``.
Nothing here does I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from .framing import HEADER_SIZE, MIN_FRAME_SIZE
from .spaces import OpaqueSpace

__all__ = [
    "DEFAULT_MAX_INFO_SIZE",
    "DEFAULT_MAX_VARIABLE_SIZE",
    "ReplyBound",
    "reply_bound",
    "space_bound",
]

DEFAULT_MAX_INFO_SIZE = 16 << 20
"""Bytes a STEP or RESET reply may spend on its info dict (``max_info_size``)."""
DEFAULT_MAX_VARIABLE_SIZE = 16 << 20
"""Bytes a reply may spend on Sequence, Graph and OpaqueSpace leaves together (``max_variable_size``)."""

_LEAF = 64  # a leaf's JSON reference, its buffer-table entry (dtype, brackets) and its padding
_DIM = 24  # each dimension in a buffer-table entry: up to 20 digits and a comma
_NODE = 32  # a tuple or dict tag, its brackets and separators
_CHAR = 6  # the most JSON bytes one character of a string can take (\u00XX)


@dataclass(frozen=True, slots=True)
class ReplyBound:
    """What :func:`reply_bound` found.

    Attributes:
        size: The largest STEP or RESET reply frame, in bytes (a multiple of 8, at least
            ``MIN_FRAME_SIZE`` so that any ERROR fits).
        observations: Bytes of it for the observations of one reply (fixed-shape leaves).
        variable: Whether a leaf of unbounded size takes part of ``max_variable_size``.
        max_info_size: The info budget it includes.
        max_variable_size: The variable-size budget it includes (when ``variable``).
    """

    size: int
    observations: int
    variable: bool
    max_info_size: int
    max_variable_size: int

    def describe(self) -> str:
        """How the bound was made, for an error message."""
        parts = [f"{self.observations} bytes of observations", f"max_info_size={self.max_info_size}"]
        if self.variable:
            parts.insert(1, f"max_variable_size={self.max_variable_size} for Sequence, Graph and custom spaces")
        return ", ".join(parts)


def space_bound(space: spaces.Space[Any], *, floor_itemsize: bool = False) -> tuple[int, bool]:
    """An upper bound on the bytes one value of ``space`` takes in a frame.

    Args:
        space: A space from the handshake (batched, for vector envs).
        floor_itemsize: Count numeric items as at least 8 bytes (a single env's values).

    Returns:
        The bytes of the fixed-size part, and whether the space has a leaf of unbounded size
        (Sequence, Graph, OpaqueSpace), which the caller budgets separately.
    """
    return _bound(space, floor_itemsize, 0)


def _array(shape: tuple[int, ...], dtype: Any, floor_itemsize: bool) -> int:
    itemsize = int(np.dtype(dtype).itemsize)
    if floor_itemsize:
        itemsize = max(itemsize, 8)
    n = int(math.prod(shape)) * itemsize
    return n + (-n % 8) + _LEAF + _DIM * len(shape)


def _bound(space: spaces.Space[Any], floor: bool, depth: int) -> tuple[int, bool]:
    if depth > 100:
        raise ValueError("space nested too deep to bound")
    if isinstance(space, OpaqueSpace):
        return _LEAF, True
    if isinstance(space, (spaces.Box, spaces.MultiDiscrete, spaces.MultiBinary, spaces.Discrete)):
        return _array(tuple(space.shape or ()), space.dtype, floor), False
    if isinstance(space, spaces.Text):
        return _LEAF + _CHAR * int(space.max_length), False
    if isinstance(space, spaces.Dict):
        total, variable = _NODE, False
        for key, sub in space.spaces.items():
            size, var = _bound(sub, floor, depth + 1)
            total += size + _CHAR * len(str(key)) + 8
            variable |= var
        return total, variable
    if isinstance(space, spaces.Tuple):
        total, variable = _NODE, False
        for sub in space.spaces:
            size, var = _bound(sub, floor, depth + 1)
            total += size + 2
            variable |= var
        return total, variable
    if isinstance(space, spaces.OneOf):
        # (index, value): the largest of the choices.
        sizes = [_bound(sub, floor, depth + 1) for sub in space.spaces]
        return _NODE + _LEAF + max((s for s, _ in sizes), default=0), any(v for _, v in sizes)
    # Sequence and Graph: their length is not bounded by the space.
    return _LEAF, True


def reply_bound(
    observation_space: spaces.Space[Any],
    *,
    num_envs: int | None,
    single_observation_space: spaces.Space[Any] | None = None,
    autoreset_mode: str | None = None,
    max_info_size: int = DEFAULT_MAX_INFO_SIZE,
    max_variable_size: int = DEFAULT_MAX_VARIABLE_SIZE,
) -> ReplyBound:
    """The largest legitimate STEP or RESET reply of an env with these spaces.

    Args:
        observation_space: The observation space from the handshake (batched for vector envs).
        num_envs: The number of lanes (vector envs), else None.
        single_observation_space: One lane's space (vector envs), for ``SameStep``'s final observations.
        autoreset_mode: The vector env's autoreset mode value (``"SameStep"`` adds final observations).
        max_info_size: The budget for the info dict.
        max_variable_size: The budget for leaves of unbounded size.

    Returns:
        The bound, and what it is made of.
    """
    vector = num_envs is not None
    obs, variable = space_bound(observation_space, floor_itemsize=not vector)
    if vector:
        assert num_envs is not None
        flags = 3 * (_LEAF + _DIM + 8 * num_envs + 8)  # rewards (float64 at most), terminations, truncations
        if autoreset_mode == "SameStep" and single_observation_space is not None:
            # info["final_obs"]: an object array of each lane's observation, encoded lane by lane.
            one, var = space_bound(single_observation_space, floor_itemsize=True)
            obs += _LEAF + num_envs * (one + 8)
            variable |= var
    else:
        flags = 3 * (_LEAF + 8)
    size = HEADER_SIZE + 2 * _NODE + obs + flags + max_info_size + (max_variable_size if variable else 0)
    size = max(size + (-size % 8), MIN_FRAME_SIZE)
    return ReplyBound(size, obs, variable, max_info_size, max_variable_size)
