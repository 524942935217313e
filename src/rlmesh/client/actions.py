"""Strict actions: the host rejects what the action space does not contain, naming the space.

Off by default: as in process, the env judges its actions (Pendulum clips, others raise).
``strict_actions=True`` on a client checks each action here before it is sent.
"""

from __future__ import annotations

import reprlib
from typing import Any

import numpy as np
from gymnasium import spaces

from ..errors import InvalidActionError

__all__ = ["check_action", "describe_action"]


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
        f"action {describe_action(action)} is not in the action space {space}", space=str(space)
    )


_REPR = reprlib.Repr()  # keyword arguments to Repr() need Python 3.12
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 8, 8, 8, 60, 60


def describe_action(action: Any) -> str:
    """A bounded description of an action, for an error message."""
    # reprlib bounds the work: a hostile or huge action is never repr()'d whole.
    if isinstance(action, np.ndarray):
        text = np.array2string(action.reshape(-1)[:8], threshold=8) + f" (dtype={action.dtype}, shape={action.shape})"
    else:
        text = _REPR.repr(action)
    return text if len(text) <= 200 else text[:197] + "..."
