"""Test envs of our own, registered with Gymnasium.

* ``KitchenSinkEnv`` ("rlmesh-test/KitchenSink-v0"): every awkward space and
  info value we can think of, seeded only through ``self.np_random``.
* ``FaultyEnv`` ("rlmesh-test/Faulty-v0"): raises on ``step(1)`` and sleeps
  on ``step(2)`` (for RemoteEnvError and timeout tests).
* ``BigObsEnv`` ("rlmesh-test/BigObs-v0"): frames and spaces far larger than
  one socket read (the multi-chunk path of the framing).

Both are importable by the ``python -m rlmesh.serve`` subprocesses as
``tests.envs:rlmesh-test/KitchenSink-v0`` when the cwd is the repo root.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["BIG_OBS_ID", "CUSTOM_SPACE_ID", "CustomSpaceEnv", "WordSpace", "FAULTY_ID", "KITCHEN_SINK_ID", "LENIENT_ID", "BigObsEnv", "FaultyEnv", "KitchenSinkEnv",
           "LenientEnv"]

KITCHEN_SINK_ID = "rlmesh-test/KitchenSink-v0"
FAULTY_ID = "rlmesh-test/Faulty-v0"
BIG_OBS_ID = "rlmesh-test/BigObs-v0"
LENIENT_ID = "rlmesh-test/Lenient-v0"
CUSTOM_SPACE_ID = "rlmesh-test/CustomSpace-v0"

# An unusual charset order, so that a codec that sorts the charset is caught
# (the order decides what Text.sample() draws).
CHARSET = "zyx-abc"


class KitchenSinkEnv(gym.Env[dict[str, Any], dict[str, Any]]):
    """An env whose observations, actions and infos exercise the whole value codec.

    Args:
        render_mode: None or "rgb_array".
        step_info_nan: Put a NaN in every step info. gymnasium's ``check_env``
            compares step infos with ``==`` (NaN != NaN), so it needs False.
        max_steps: The episode ends after 2..max_steps steps (seeded).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self, render_mode: str | None = None, step_info_nan: bool = True, max_steps: int = 5
    ) -> None:
        self.render_mode = render_mode
        self.step_info_nan = step_info_nan
        self.max_steps = max_steps
        self.observation_space = spaces.Dict(
            {
                "pair": spaces.Tuple(
                    (spaces.Discrete(3), spaces.Box(-1.0, 1.0, (2,), np.float32))
                ),
                "text": spaces.Text(6, min_length=1, charset=CHARSET),
                "bits": spaces.MultiBinary((2, 3)),
                "grid": spaces.MultiDiscrete(np.array([[2, 3], [4, 5]]), start=np.array([[-1, 0], [1, 2]])),
                "pos": spaces.Discrete(5, start=-2),
                "image": spaces.Box(0, 255, (16, 16, 3), np.uint8),
            }
        )
        self.action_space = spaces.Dict(
            {
                "move": spaces.Discrete(4),
                "force": spaces.Box(-1.0, 1.0, (2,), np.float32),
                "flags": spaces.Tuple((spaces.MultiBinary(2), spaces.Discrete(3, start=1))),
            }
        )
        self._t = 0
        self._limit = 0
        self._state = np.zeros(2, dtype=np.float64)

    def _obs(self) -> dict[str, Any]:
        rng = self.np_random
        text_len = int(rng.integers(1, 7))
        return {
            "pair": (
                np.int64(rng.integers(3)),
                rng.uniform(-1.0, 1.0, 2).astype(np.float32),
            ),
            "text": "".join(CHARSET[i] for i in rng.integers(0, len(CHARSET), text_len)),
            "bits": rng.integers(0, 2, (2, 3), dtype=np.int8),
            "grid": rng.integers(0, [[2, 3], [4, 5]]) + np.array([[-1, 0], [1, 2]]),
            "pos": int(rng.integers(-2, 3)),
            "image": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        self._limit = int(self.np_random.integers(2, self.max_steps + 1))
        self._state = self.np_random.normal(size=2)
        info = {
            "nan": float("nan"),
            "options": options,
            "limit": np.int32(self._limit),
            "neg_zero": -0.0,
            "big": 2**70,
        }
        return self._obs(), info

    def step(self, action: dict[str, Any]) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        assert self.action_space.contains(action), action
        self._t += 1
        self._state = self._state + np.asarray(action["force"], dtype=np.float64)
        reward = float(self.np_random.normal()) + float(action["move"])
        terminated = self._t >= self._limit
        info: dict[str, Any] = {
            "array": self._state.copy(),
            "scalar": np.float32(reward),
            "count": np.int16(self._t),
            "flag": np.bool_(terminated),
            "nested": {"deep": {"t": self._t, "bytes": b"\x00\xff"}, 7: "int key", (1, "a"): None},
            "tuple": (self._t, "step", np.uint8(3)),
            "list": [1.5, "x", None],
            "looks_tagged": {"__nd__": 0},
        }
        if self.step_info_nan:
            info["nan"] = float("nan")
            info["nan_array"] = np.array([np.nan, np.inf, -np.inf], dtype=np.float32)
        return self._obs(), reward, terminated, False, info

    def render(self) -> np.ndarray[Any, Any] | None:
        if self.render_mode != "rgb_array":
            return None
        frame = np.zeros((24, 32, 3), dtype=np.uint8)
        frame[..., 0] = self._t * 40
        frame[: self._t + 1, :, 1] = 255
        frame[..., 2] = np.uint8(int(abs(self._state[0]) * 50) % 256)
        return frame


class FaultyEnv(gym.Env[np.ndarray[Any, Any], int]):
    """An env that misbehaves on request.

    Action 0 steps normally, action 1 raises ``RuntimeError``, action 2 sleeps
    ``step_delay`` seconds and then steps normally.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, step_delay: float = 0.5) -> None:
        self.step_delay = step_delay
        self.observation_space = spaces.Box(-10.0, 10.0, (3,), np.float32)
        self.action_space = spaces.Discrete(3)
        self._t = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray[Any, Any], dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray[Any, Any], float, bool, bool, dict[str, Any]]:
        if action == 1:
            raise RuntimeError(f"boom: the action asked for it at t={self._t}")
        if action == 2:
            time.sleep(self.step_delay)
        self._t += 1
        return np.full(3, self._t, dtype=np.float32), 1.0, self._t >= 10, False, {"t": self._t}


class BigObsEnv(gym.Env[np.ndarray[Any, Any], int]):
    """Atari-sized float observations (400 KB a frame) with per-pixel bounds."""

    def __init__(self) -> None:
        low = np.zeros((210, 160, 3), np.float32)
        high = np.linspace(1.0, 2.0, low.size, dtype=np.float32).reshape(low.shape)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self._t = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray[Any, Any], dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        return self._obs(), {}

    def _obs(self) -> np.ndarray[Any, Any]:
        return self.np_random.random(self.observation_space.shape, dtype=np.float32)

    def step(self, action: int) -> tuple[np.ndarray[Any, Any], float, bool, bool, dict[str, Any]]:
        self._t += 1
        return self._obs(), float(action), self._t >= 4, False, {"mean": np.float32(self._t)}


class LenientEnv(gym.Env[int, int]):
    """Takes any action without checking it (as some envs do): an action of 4 in a Discrete(4)
    space ends the episode; a ``gravity`` attribute for the attribute tests."""

    def __init__(self) -> None:
        self.observation_space = spaces.Discrete(4)
        self.action_space = spaces.Discrete(4)
        self.gravity = 9.8

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        super().reset(seed=seed)
        return 0, {"reset": True}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
        action = int(action)
        return (action if action < 3 else 0), 0.0, action >= 3, False, {"action": action}

    def double_gravity(self, factor: float = 2.0) -> float:
        return self.gravity * factor


class WordSpace(spaces.Space[str]):
    """A custom space (like MiniGrid's MissionSpace): one of a few words."""

    WORDS = ("go to the red door", "pick up the key", "open the box")

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(None, None, seed)

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        return self.WORDS[int(self.np_random.integers(len(self.WORDS)))]

    def contains(self, x: Any) -> bool:
        return x in self.WORDS

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WordSpace)


class CustomSpaceEnv(gym.Env[dict[str, Any], str]):
    """Observations and actions in a custom space, which rlmesh cannot rebuild on the host."""

    def __init__(self) -> None:
        self.observation_space = spaces.Dict({"pos": spaces.Box(-1, 1, (2,), np.float32), "mission": WordSpace()})
        self.action_space = WordSpace()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        return {"pos": np.zeros(2, np.float32), "mission": WordSpace.WORDS[0]}, {}

    def step(self, action: str) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        assert self.action_space.contains(action), action
        return {"pos": np.ones(2, np.float32), "mission": action}, 1.0, False, False, {}


gym.register(id=KITCHEN_SINK_ID, entry_point="tests.envs:KitchenSinkEnv", max_episode_steps=50)
gym.register(id=FAULTY_ID, entry_point="tests.envs:FaultyEnv")
gym.register(id=BIG_OBS_ID, entry_point="tests.envs:BigObsEnv")
gym.register(id=LENIENT_ID, entry_point="tests.envs:LenientEnv")
gym.register(id=CUSTOM_SPACE_ID, entry_point="tests.envs:CustomSpaceEnv")
