"""How a vector env's lanes split over shards, and how the shards' results merge back.

Pure functions over the lane bounds (``[(a, b), ...]``, shard ``j`` holding lanes ``a..b-1``):
no connection, no server. :class:`~rlmesh.client.shards.AsyncShardedVectorEnv` plans each
request with the ``split_*`` functions and builds each result with :func:`batch_from_parts` and
:func:`merge_infos`; one shard is the case ``K = 1``, not a branch.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from .._checks import is_int
from ..errors import InvalidArgumentError, ProtocolError

__all__ = [
    "Bounds",
    "batch_from_parts",
    "bounds_of",
    "join_lanes",
    "lanes_of",
    "merge_infos",
    "resolve_shards",
    "split_actions",
    "split_lanes",
    "split_reset",
]

Bounds = Sequence[tuple[int, int]]
"""Each shard's lanes, as ``(first, end)``, in lane order."""

_FLAT = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def resolve_shards(shards: int | str, num_envs: int) -> int:
    """``shards`` as a count: ``"auto"`` is one per available core, capped by ``num_envs``.

    Raises:
        InvalidArgumentError: Not a positive int or ``"auto"``, or more shards than lanes.
    """
    if shards == "auto":
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        return max(1, min(cores, num_envs))
    if not is_int(shards) or shards < 1:
        raise InvalidArgumentError(f"shards must be a positive int or 'auto', got {shards!r}")
    if shards > num_envs:
        raise InvalidArgumentError(f"shards={shards} is more than num_envs={num_envs}: each shard needs a lane")
    return shards


def split_lanes(num_envs: int, shards: int) -> list[int]:
    """Lanes per shard, as even as possible (the first shards take one more)."""
    base, extra = divmod(num_envs, shards)
    return [base + (1 if j < extra else 0) for j in range(shards)]


def bounds_of(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """The bounds of shards of these sizes, lanes in order."""
    out, at = [], 0
    for size in sizes:
        out.append((at, at + size))
        at += size
    return out


def split_actions(action_space: spaces.Space[Any], single_action_space: spaces.Space[Any], bounds: Bounds,
                  actions: Any) -> list[Any]:
    """One batch of actions per shard (views of ``actions`` where it is one array).

    Raises:
        InvalidArgumentError: Not one action per lane (also a ``ValueError``, as Gymnasium's).
    """
    if len(bounds) == 1:
        return [actions]  # one shard: the actions as they are (its server judges them, as in process)
    num_envs = bounds[-1][1]
    if isinstance(actions, np.ndarray) and isinstance(single_action_space, _FLAT) and actions.shape[:1] == (num_envs,):
        return [actions[a:b] for a, b in bounds]
    lanes = list(iterate(action_space, actions))
    if len(lanes) != num_envs:
        raise InvalidArgumentError(f"expected actions for {num_envs} lanes, got {len(lanes)}")
    return [_concat(single_action_space, lanes[a:b]) for a, b in bounds]


def split_reset(bounds: Bounds, seed: Any, options: dict[str, Any] | None) -> list[tuple[int, Any, dict[str, Any] | None]]:
    """Each shard's ``(index, seed, options)`` for a reset; a shard with no lane in
    ``options["reset_mask"]`` is left out (Gymnasium refuses an empty mask). One shard gets the
    seed and options as they are.

    An int seed ``s`` seeds lane ``i`` with ``s + i``: shard ``j`` gets ``s`` plus its first lane.

    Raises:
        InvalidArgumentError: A seed list or a reset mask not of one item per lane (also a
            ``ValueError``, with Gymnasium's wording).
    """
    if len(bounds) == 1:
        return [(0, seed, options)]  # one shard: as they are (its server judges them, as in process)
    num_envs = bounds[-1][1]
    if seed is None or (isinstance(seed, int) and not isinstance(seed, bool)):
        seeds: list[Any] = [None if seed is None else seed + a for a, _ in bounds]
    else:
        listed = list(seed)
        if len(listed) != num_envs:
            raise InvalidArgumentError(f"If seeds are passed as a list the length must match num_envs={num_envs} "
                                       f"but got length={len(listed)}.")
        seeds = [listed[a:b] for a, b in bounds]
    mask = None if options is None else options.get("reset_mask")
    if mask is None:
        return [(j, seeds[j], options) for j in range(len(bounds))]
    mask = np.asarray(mask)
    if mask.shape != (num_envs,):
        raise InvalidArgumentError(f"`options['reset_mask']` must have shape `({num_envs},)`, got {mask.shape}")
    assert options is not None
    return [(j, seeds[j], {**options, "reset_mask": mask[a:b]}) for j, (a, b) in enumerate(bounds) if mask[a:b].any()]


def batch_from_parts(space: spaces.Space[Any], num_envs: int, parts: Sequence[tuple[int, int, Any]],
                     owned: bool) -> Any:
    """One batch of ``num_envs`` lanes of the single space ``space`` from each shard's batch of
    its lanes ``(a, b, batch)``, structured as Gymnasium's ``concatenate`` would build it.

    Every array is copied once, straight into the batch, so nothing returned views a part.
    ``owned``: the parts are the caller's own (not views of a shared region); then one part that
    covers every lane is the batch itself, with no copy.

    Raises:
        ProtocolError: A part whose shape does not fit its lanes (a misbehaving server).
    """
    if len(parts) == 1 and parts[0][1] - parts[0][0] == num_envs:
        value = parts[0][2]
        if owned:
            return value
        if type(value) is np.ndarray and value.shape[:1] == (num_envs,):
            return value.copy()  # one array of every lane: what _build makes, in one call
    return _build(space, num_envs, parts)


def join_lanes(arrays: Sequence[np.ndarray[Any, Any]], owned: bool) -> np.ndarray[Any, Any]:
    """One array of every lane from each shard's (rewards, terminations, truncations): a copy,
    unless ``owned`` and one shard's array is all of them."""
    if len(arrays) == 1:
        return arrays[0] if owned else arrays[0].copy()
    return np.concatenate(arrays)


def _build(space: spaces.Space[Any], n: int, parts: Sequence[tuple[int, int, Any]]) -> Any:
    if isinstance(space, spaces.Dict):
        for _, _, v in parts:
            if not isinstance(v, dict):
                raise ProtocolError(f"a shard's observation is a {type(v).__name__}, not a dict")
        return {k: _build(s, n, [(a, b, v[k]) for a, b, v in parts]) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        for _, _, v in parts:
            if not isinstance(v, tuple) or len(v) != len(space.spaces):
                raise ProtocolError("a shard's observation does not match the Tuple space")
        return tuple(_build(s, n, [(a, b, v[i]) for a, b, v in parts]) for i, s in enumerate(space.spaces))
    first = parts[0][2] if parts else None
    if isinstance(first, np.ndarray):
        out = np.empty((n, *first.shape[1:]), dtype=first.dtype)
        try:
            for a, b, v in parts:
                out[a:b] = v
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"a shard's batch does not fit its lanes: {exc}") from None
        return out
    # Spaces batched as tuples (Text, Sequence, Graph, OneOf, custom): the lanes' values in order.
    lanes: list[Any] = []
    for a, b, v in parts:
        if not isinstance(v, tuple) or len(v) != b - a:
            got = f"{len(v)} values" if isinstance(v, tuple) else f"a {type(v).__name__}"
            raise ProtocolError(f"a shard's batch holds {got} for {b - a} lanes")
        lanes.extend(v)
    return tuple(lanes)


def lanes_of(space: spaces.Space[Any], value: Any, a: int, b: int) -> Any:
    """Lanes ``a..b-1`` of a batch of the single space ``space`` (views of its arrays)."""
    if isinstance(space, spaces.Dict) and isinstance(value, dict):
        return {k: lanes_of(space.spaces[k], v, a, b) if k in space.spaces else v[a:b] for k, v in value.items()}
    if isinstance(space, spaces.Tuple) and isinstance(value, tuple) and len(value) == len(space.spaces):
        return tuple(lanes_of(s, v, a, b) for s, v in zip(space.spaces, value, strict=True))
    return value[a:b]


def _concat(space: spaces.Space[Any], lanes: list[Any]) -> Any:
    out = create_empty_array(space, len(lanes))
    assert out is not None
    return concatenate(space, lanes, out)


def merge_infos(num_envs: int, parts: Sequence[tuple[int, int, dict[str, Any]]]) -> dict[str, Any]:
    """One batched info from each shard's (``_key`` masks and all), as ``SyncVectorEnv`` builds it.

    One part that covers every lane is the info itself.
    """
    if len(parts) == 1 and parts[0][1] - parts[0][0] == num_envs:
        return parts[0][2]
    out: dict[str, Any] = {}
    for a, b, info in parts:
        _merge_into(out, num_envs, a, b, info)
    return out


def merge_infos_into(out: dict[str, Any], num_envs: int, a: int, b: int, info: dict[str, Any]) -> None:
    """Merge one shard's batched info (its lanes ``a..b-1``) into ``out``, in place."""
    _merge_into(out, num_envs, a, b, info)


def iterate_lanes(space: spaces.Space[Any], batch: Any, n: int) -> list[Any]:
    """The ``n`` single values of a batch of the single space ``space``, each its own copy."""
    return [copy.deepcopy(v) for v in iterate(batch_space(space, n), batch)]


def _merge_into(out: dict[str, Any], n: int, a: int, b: int, info: dict[str, Any]) -> None:
    for key, value in info.items():
        if isinstance(value, dict):
            _merge_into(out.setdefault(key, {}), n, a, b, value)
            continue
        arr = np.asarray(value)
        target = out.get(key)
        if target is None:
            target = np.full(n, None, dtype=object) if arr.dtype == object else np.zeros((n, *arr.shape[1:]), arr.dtype)
            out[key] = target
        target[a:b] = arr
