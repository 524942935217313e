"""Argument checks that every layer shares (host and server side; standard library only).

``bool`` is a subclass of ``int`` in Python, so ``isinstance(True, int)`` holds; an option that
wants a count or a number of seconds must refuse ``True``. These helpers say so once.
"""

from __future__ import annotations

from typing import Any, TypeGuard

from .errors import InvalidArgumentError

__all__ = ["check_num_envs", "is_int", "is_number"]


def is_int(value: Any) -> TypeGuard[int]:
    """Whether ``value`` is an ``int`` and not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> TypeGuard[int | float]:
    """Whether ``value`` is an ``int`` or a ``float`` and not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_num_envs(num_envs: Any, *, optional: bool = False) -> None:
    """Check a vector env's lane count: a positive int (or None, when ``optional``).

    Raises:
        InvalidArgumentError: Anything else.
    """
    if optional and num_envs is None:
        return
    if not is_int(num_envs) or num_envs < 1:
        raise InvalidArgumentError(f"num_envs must be a positive int{' or None' if optional else ''}, got {num_envs!r}")
