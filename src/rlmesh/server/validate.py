"""Action validation: reject what the action space does not contain, naming the space."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from ..errors import InvalidActionError

__all__ = ["check_action"]


def check_action(space: spaces.Space[Any], action: Any) -> None:
    """Raise if ``action`` is not in ``space``.

    ``Space.contains`` is the rule, with one allowance: a Box action whose dtype
    has the same kind as the space's (float64 for a float32 Box, say) is judged
    by its values, since in-process Gymnasium envs accept it. The action itself
    is passed to the env unchanged.

    Raises:
        InvalidActionError: The action is outside the space, or of the wrong shape or dtype.
    """
    try:
        if space.contains(action):
            return
        if isinstance(space, spaces.Box):
            arr = np.asarray(action)
            if (
                arr.shape == space.shape
                and np.can_cast(arr.dtype, space.dtype, "same_kind")
                and space.contains(arr.astype(space.dtype))
            ):
                return
    except Exception:  # a malformed action can make contains() itself raise
        pass
    raise InvalidActionError(
        f"action {_short(action)} is not in the action space {space}", space=str(space)
    )


def _short(action: Any) -> str:
    text = repr(action)
    if isinstance(action, np.ndarray):
        text += f" (dtype={action.dtype}, shape={action.shape})"
    return text if len(text) <= 200 else text[:197] + "..."
