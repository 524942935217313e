"""Bodies of the handshake that are more than plain values: the env spec."""

from __future__ import annotations

from typing import Any

from gymnasium.envs.registration import EnvSpec

__all__ = ["describe_spec", "rebuild_spec"]

_SPEC_FIELDS = (
    "id",
    "reward_threshold",
    "nondeterministic",
    "max_episode_steps",
    "order_enforce",
    "disable_env_checker",
    "kwargs",
)


def describe_spec(spec: EnvSpec | None) -> dict[str, Any] | None:
    """Describe an ``EnvSpec`` with plain values (callable entry points become names).

    Args:
        spec: The env's spec, or None.

    Returns:
        A dict for the handshake, or None.
    """
    if spec is None:
        return None
    out: dict[str, Any] = {name: getattr(spec, name) for name in _SPEC_FIELDS}
    for name in ("entry_point", "vector_entry_point"):
        value = getattr(spec, name)
        if value is not None and not isinstance(value, str):
            value = f"{getattr(value, '__module__', '?')}:{getattr(value, '__qualname__', repr(value))}"
        out[name] = value
    return out


def rebuild_spec(desc: dict[str, Any] | None) -> EnvSpec | None:
    """Rebuild the ``EnvSpec`` described by :func:`describe_spec`.

    Args:
        desc: The description, or None.

    Returns:
        An ``EnvSpec`` equal in its fields to the server's, or None.
    """
    if desc is None:
        return None
    return EnvSpec(**desc)
