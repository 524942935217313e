"""How a vector env's lanes split over shards, and how the shards' results merge back."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import concatenate, create_empty_array

from .._checks import is_int
from ..errors import InvalidArgumentError

__all__ = ["concat_lanes", "copied", "merge_infos", "resolve_shards", "split_lanes"]


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


def copied(value: Any) -> Any:
    """``value`` with every array copied (views into a shared region become the host's own)."""
    if isinstance(value, np.ndarray):
        return np.array(value)
    if type(value) is dict:
        return {k: copied(v) for k, v in value.items()}
    if type(value) is tuple:
        return tuple(copied(v) for v in value)
    return value


def concat_lanes(space: spaces.Space[Any], lanes: list[Any]) -> Any:
    """One batch of ``space`` from its lanes' values."""
    out = create_empty_array(space, len(lanes))
    assert out is not None
    return concatenate(space, lanes, out)


def merge_infos(n: int, parts: list[tuple[int, int, dict[str, Any]]]) -> dict[str, Any]:
    # Shard infos are batched already (arrays of the shard's lanes, with `_key` masks): place each
    # in its lanes of arrays sized for all lanes, as SyncVectorEnv's _add_info would have built them.
    out: dict[str, Any] = {}
    for offset, size, info in parts:
        _merge_into(out, n, offset, size, info)
    return out


def _merge_into(out: dict[str, Any], n: int, offset: int, size: int, info: dict[str, Any]) -> None:
    for key, value in info.items():
        if isinstance(value, dict):
            _merge_into(out.setdefault(key, {}), n, offset, size, value)
            continue
        arr = np.asarray(value)
        target = out.get(key)
        if target is None:
            target = np.full(n, None, dtype=object) if arr.dtype == object else np.zeros((n, *arr.shape[1:]), arr.dtype)
            out[key] = target
        target[offset:offset + size] = arr
