"""CartPole that dies hard on some seeds and hangs on others (the evaluation harness's faulty env).

``rlmesh_faulty:make(die_seeds=[...], hang_seeds=[...], oom_seeds=[...], step_delay=0.0)``: on the
5th step of an episode reset with a seed in ``die_seeds`` the process exits at once
(``os._exit(3)``, after a line on stderr); with a seed in ``hang_seeds`` it sleeps for an hour;
with one in ``oom_seeds`` it allocates memory until the kernel's OOM killer ends it. Other seeds are
CartPole-v1 exactly, so their returns equal Gymnasium's in process. ``step_delay`` slows each
step (seconds), for tests that interrupt a run.
"""

from __future__ import annotations

import os
import sys
import time

import gymnasium as gym

FAULT_STEP = 5
EXIT_CODE = 3


class FaultyWrapper(gym.Wrapper):
    def __init__(self, env, die_seeds=(), hang_seeds=(), step_delay=0.0, oom_seeds=()):
        super().__init__(env)
        self.die_seeds = {int(s) for s in die_seeds}
        self.hang_seeds = {int(s) for s in hang_seeds}
        self.oom_seeds = {int(s) for s in oom_seeds}
        self.step_delay = float(step_delay)
        self.episode_seed = None
        self.steps = 0

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.episode_seed = seed
        self.steps = 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        self.steps += 1
        if self.steps == FAULT_STEP and self.episode_seed in self.die_seeds:
            print(f"rlmesh_faulty: dying on seed {self.episode_seed}", file=sys.stderr, flush=True)
            os._exit(EXIT_CODE)
        if self.steps == FAULT_STEP and self.episode_seed in self.hang_seeds:
            print(f"rlmesh_faulty: hanging on seed {self.episode_seed}", file=sys.stderr, flush=True)
            time.sleep(3600)
        if self.steps == FAULT_STEP and self.episode_seed in self.oom_seeds:
            print(f"rlmesh_faulty: eating memory on seed {self.episode_seed}", file=sys.stderr, flush=True)
            hog = []
            while True:
                hog.append(bytearray(16 << 20))  # touched: the pages are really used
        if self.step_delay:
            time.sleep(self.step_delay)
        return self.env.step(action)


def make(die_seeds=(), hang_seeds=(), step_delay=0.0, oom_seeds=()):
    """CartPole-v1 that fails on the given seeds (see the module docstring)."""
    return FaultyWrapper(gym.make("CartPole-v1"), die_seeds, hang_seeds, step_delay, oom_seeds)
