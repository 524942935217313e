"""Envs for the evaluation harness's tests.

``rlmesh_eval_envs:make_spaces()``: a seeded env whose observations are a Dict of Discrete, Text
and a Tuple (plain policies on every space kind). Each step moves a cell on a 4x4 grid (action 0-3); the observation
names the cell, spells a word drawn from the env's RNG, and carries flags. The reward is 1 when
the action equals the word's length mod 4; an episode lasts 5 to 14 steps, drawn at reset.
``info["is_success"]`` is reported at every step: True when the reward was 1.

``rlmesh_eval_envs:make_history()``: an env that ``reset(seed)`` does not fully determine, as
Meta-World MT1: each reset first draws the episode's goal from a generator the env made once (so
the k-th episode of an env gets the k-th goal), then reseeds. An episode lasts until the counter,
moved by the actions, reaches the goal (at most 30 steps).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

CHARSET = "abcdefgh"


class SpacesEnv(gym.Env):
    def __init__(self):
        self.observation_space = spaces.Dict({
            "cell": spaces.Discrete(16),
            "word": spaces.Text(8, min_length=1, charset=CHARSET),
            "flags": spaces.Tuple((spaces.MultiBinary(3), spaces.Discrete(2))),
        })
        self.action_space = spaces.Discrete(4)
        self._cell = 0
        self._t = 0
        self._limit = 0
        self._word = "a"

    def _obs(self):
        rng = self.np_random
        self._word = "".join(CHARSET[i] for i in rng.integers(0, len(CHARSET), int(rng.integers(1, 9))))
        flags = rng.integers(0, 2, 3).astype(np.int8)
        return {"cell": self._cell, "word": self._word, "flags": (flags, int(self._t % 2))}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._cell = int(self.np_random.integers(0, 16))
        self._t = 0
        self._limit = int(self.np_random.integers(5, 15))
        return self._obs(), {}

    def step(self, action):
        action = int(action)
        reward = float(action == len(self._word) % 4)
        row, col = divmod(self._cell, 4)
        row, col = [(row - 1, col), (row, col + 1), (row + 1, col), (row, col - 1)][action]
        self._cell = min(max(row, 0), 3) * 4 + min(max(col, 0), 3)
        self._t += 1
        return self._obs(), reward, False, self._t >= self._limit, {"is_success": reward == 1.0}


def make_spaces():
    return SpacesEnv()


class HistoryEnv(gym.Env):
    def __init__(self):
        self.observation_space = spaces.Box(-100.0, 100.0, (2,), np.float64)
        self.action_space = spaces.Discrete(2)
        self._goals = np.random.default_rng(12345)  # drawn from at each reset: the env's history counts
        self._goal = 0
        self._x = 0
        self._t = 0

    def reset(self, *, seed=None, options=None):
        self._goal = int(self._goals.integers(3, 12))
        super().reset(seed=seed)
        self._x = int(self.np_random.integers(0, 3))
        self._t = 0
        return np.array([self._x, self._goal], dtype=np.float64), {}

    def step(self, action):
        self._x += 1 if int(action) == 1 else 0
        self._t += 1
        reached = self._x >= self._goal
        return (np.array([self._x, self._goal], dtype=np.float64), -1.0 + 10.0 * reached, reached, self._t >= 30,
                {"is_success": reached})


def make_history():
    return HistoryEnv()
