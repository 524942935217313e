"""What the host and the server must agree on outside the frames: sources, modes, the ready line.

The host builds a server's command line (``rlmesh serve SOURCE --num-envs ...``) and the
server parses it, so the source grammar, the vectorization and autoreset modes and the
line a server prints once it listens live here, beside the rest of the contract.
"""

from __future__ import annotations

import re

from gymnasium.vector import AutoresetMode

from ..errors import InvalidArgumentError

__all__ = [
    "AUTORESET_MODES",
    "FACTORY_PATTERN",
    "READY_LINE_PREFIX",
    "VECTORIZATION_MODES",
    "is_gym_id",
    "is_versioned",
    "parse_autoreset_mode",
    "parse_vectorization_mode",
]

READY_LINE_PREFIX = "rlmesh-server ready"
"""Printed by ``rlmesh serve`` (with the address) once it accepts connections.

It is for people and for scripts that start a server they trust. A sandbox never
relies on it: env code runs in the same process and could print it.
"""

VECTORIZATION_MODES = ("sync", "async", "vector")
"""``sync``/``async`` wrap single envs in Gymnasium's Sync/AsyncVectorEnv; ``vector`` uses
the env's own vector implementation (Gymnasium's ``vector_entry_point``)."""

_GYM_ID = re.compile(r"^(?:[\w.]+:)?(?:[\w.-]+/)?[\w.:-]+-v\d+$|^(?:[\w.]+:)?(?:[\w.-]+/)?[\w.-]+$")
FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_VERSIONED = re.compile(r"-v\d+$")


def is_versioned(name: str) -> bool:
    """Whether ``name`` ends in a Gymnasium version, ``-vN`` (``CartPole-v1``)."""
    return _VERSIONED.search(name) is not None


def is_gym_id(source: str) -> bool:
    """Whether ``source`` names a Gymnasium id rather than a ``module:callable`` factory."""
    if source.startswith("gym://"):
        return True
    if FACTORY_PATTERN.match(source) and not is_versioned(source):
        return False
    return bool(_GYM_ID.match(source))


def parse_vectorization_mode(value: str) -> str:
    """Check a vectorization mode (``vector_entry_point`` is accepted for ``vector``).

    Raises:
        InvalidArgumentError: Not a vectorization mode.
    """
    if value == "vector_entry_point":
        return "vector"
    if value not in VECTORIZATION_MODES:
        raise InvalidArgumentError(f"vectorization_mode must be one of {VECTORIZATION_MODES}, got {value!r}")
    return value


AUTORESET_MODES = tuple(mode.name.lower() for mode in AutoresetMode)
"""The autoreset modes by name (``next_step``, ``same_step``, ``disabled``), as options take them."""


def parse_autoreset_mode(value: str | AutoresetMode) -> AutoresetMode:
    """Accept an ``AutoresetMode``, its value (``"NextStep"``) or its name (``"next_step"``).

    Raises:
        InvalidArgumentError: Not an autoreset mode.
    """
    if isinstance(value, AutoresetMode):
        return value
    try:
        return AutoresetMode(value)
    except ValueError:
        pass
    try:
        return AutoresetMode[str(value).upper()]
    except KeyError:
        raise InvalidArgumentError(f"autoreset_mode must be one of {list(AUTORESET_MODES)}, got {value!r}") from None
