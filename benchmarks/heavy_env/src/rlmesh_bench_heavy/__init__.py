"""A synthetic env whose step costs a fixed amount of CPU work (no sleeping, no I/O)."""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np
from gymnasium import spaces

WORK_NS = 200_000  # each step burns 200 us of its thread's CPU time


class HeavyEnv(gym.Env):
    """CartPole-sized observations; each step burns ``work_ns`` of CPU time in pure Python,
    holding the GIL. The work is measured in the thread's CPU time (not in loop iterations,
    which cost more or less on another interpreter build), so a step is the same work
    wherever it runs, and time spent preempted does not count as work."""

    def __init__(self, work_ns: int = WORK_NS):
        self.work_ns = int(work_ns)
        self.observation_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.action_space = spaces.Discrete(2)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self.np_random.uniform(-1, 1, 4).astype(np.float32), {}

    def step(self, action):
        clock = time.thread_time_ns
        end = clock() + self.work_ns
        acc = int(action)
        while clock() < end:
            for i in range(50):
                acc = (acc * 31 + i) % 1_000_003
        self._t += 1
        obs = np.full(4, (self._t % 1000) / 1000.0 * (1 if action else -1), dtype=np.float32)
        return obs, 1.0, False, self._t >= 200, {}


gym.register("RlmeshBenchHeavy-v0", entry_point="rlmesh_bench_heavy:HeavyEnv")
