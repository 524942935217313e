"""One lane: an :class:`~rlmesh.sandbox.env.AsyncSandboxEnv` driven as a vector env of one lane.

A plain policy runs one episode per sandbox. The runner drives every sandbox through the vector
API (``reset(seed=[...], options={"reset_mask": ...})``, batched steps); for one lane, a single
env crosses that API at a fraction of a one-lane vector env's cost (no lane bookkeeping on either
side), which keeps :func:`~rlmesh.evaluate` within a few percent of a hand-written loop of
``AsyncSandboxEnv``s. The runner never steps a lane whose episode ended before resetting it, so
a single env's plain reset is the vector env's masked one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from ..sandbox.env import AsyncSandboxEnv

__all__ = ["OneLane"]

_SHOWN = np.ones(1, dtype=np.bool_)
_NUMBERS = (bool, int, float, np.bool_, np.number)


class OneLane:
    """A sandbox of one env, with the vector API the runner uses.

    Args:
        source: The sandbox source.
        **options: Sandbox options and env kwargs, as :class:`AsyncSandboxEnv` takes them.
    """

    def __init__(self, source: str, **options: Any) -> None:
        self.env = AsyncSandboxEnv(source, **options)
        self.num_envs = 1

    async def start(self) -> OneLane:
        """Start the sandbox."""
        await self.env.start()
        self.single_observation_space: spaces.Space[Any] = self.env.observation_space
        self.single_action_space: spaces.Space[Any] = self.env.action_space
        self.observation_space = batch_space(self.single_observation_space, 1)
        self.action_space = batch_space(self.single_action_space, 1)
        self.metadata: dict[str, Any] = dict(self.env.metadata)
        return self

    async def close(self) -> None:
        """Close the sandbox. Idempotent."""
        await self.env.close()

    @property
    def image_id(self) -> str | None:
        """The id (digest) of the image the sandbox runs."""
        return self.env.image_id

    @property
    def container_logs(self) -> str:
        """What the container printed."""
        return self.env.container_logs

    def _batch(self, obs: Any) -> Any:
        if isinstance(obs, np.ndarray):
            return obs[None]
        out: Any = create_empty_array(self.single_observation_space, 1)
        return concatenate(self.single_observation_space, [obs], out)

    async def reset(self, *, seed: list[int | None], options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Reset the lane with ``seed[0]`` (a mask, when given, holds the one lane)."""
        obs, info = await self.env.reset(seed=seed[0])
        return self._batch(obs), _lane_info(info)

    async def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step the lane with ``actions``' one action."""
        action = actions[0] if isinstance(actions, np.ndarray) else next(iter(iterate(self.action_space, actions)))
        obs, reward, terminated, truncated, info = await self.env.step(action)
        return (self._batch(obs), np.array([reward], dtype=np.float64), np.array([terminated]),
                np.array([truncated]), _lane_info(info))

    async def get_attr(self, name: str) -> tuple[Any, ...]:
        """The env's attribute ``name``, as a vector env's ``get_attr`` gives it."""
        return (await self.env.get_wrapper_attr(name),)

    async def render(self) -> tuple[Any, ...]:
        """The env's frame, as a vector env's ``render`` gives it."""
        return (await self.env.render(),)


def _lane_info(info: dict[str, Any]) -> dict[str, Any]:
    """A single env's info as a vector env's: each value in a one-lane array, with its mask."""
    out: dict[str, Any] = {}
    for key, value in info.items():
        if isinstance(value, _NUMBERS):
            lane = np.array([value])
        else:
            lane = np.empty(1, dtype=object)
            lane[0] = value
        out[key] = lane
        out["_" + key] = _SHOWN
    return out
