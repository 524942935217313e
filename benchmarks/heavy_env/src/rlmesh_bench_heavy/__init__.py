"""A synthetic env whose step costs a fixed amount of CPU work (no sleeping, no I/O)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

WORK = 1500  # iterations of the inner loop: about 200 us a step on the project's machines


class HeavyEnv(gym.Env):
    """CartPole-sized observations; each step burns CPU in pure Python, holding the GIL."""

    def __init__(self, work: int = WORK):
        self.work = int(work)
        self.observation_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.action_space = spaces.Discrete(2)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self.np_random.uniform(-1, 1, 4).astype(np.float32), {}

    def step(self, action):
        acc = 0
        for i in range(self.work):
            acc = (acc * 31 + i + int(action)) % 1_000_003
        self._t += 1
        obs = np.full(4, (acc % 1000) / 1000.0, dtype=np.float32)
        return obs, 1.0, False, self._t >= 200, {}


gym.register("RlmeshBenchHeavy-v0", entry_point="rlmesh_bench_heavy:HeavyEnv")
