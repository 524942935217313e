"""CartPole that dies hard on some seeds and hangs on others (the evaluation harness's faulty env).

``rlmesh_faulty:make(die_seeds=[...], hang_seeds=[...], oom_seeds=[...], step_delay=0.0)``: on the
5th step of an episode reset with a seed in ``die_seeds`` the process exits at once
(``os._exit(3)``, after a line on stderr); with a seed in ``hang_seeds`` it sleeps for an hour;
with one in ``oom_seeds`` it allocates memory until the kernel's OOM killer ends it. With
``flaky_seeds`` and ``flaky_probability``, a lane whose last seed is one of them, modulo
1_000_003 (so a restart's seed stays flaky), exits at each step with that probability, drawn from
a generator seeded with that seed: the same seeds fail at the same steps. Other seeds are
CartPole-v1 exactly, so their returns equal Gymnasium's in process. ``step_delay`` slows each
step (seconds), for tests that interrupt a run.
"""

from __future__ import annotations

import os
import random
import sys
import time

import gymnasium as gym

FAULT_STEP = 5
EXIT_CODE = 3


class FaultyWrapper(gym.Wrapper):
    def __init__(self, env, die_seeds=(), hang_seeds=(), step_delay=0.0, oom_seeds=(), flaky_seeds=(),
                 flaky_probability=0.0):
        super().__init__(env)
        self.flaky_seeds = {int(s) for s in flaky_seeds}
        self.flaky_probability = float(flaky_probability)
        self.flaky = None
        self.die_seeds = {int(s) for s in die_seeds}
        self.hang_seeds = {int(s) for s in hang_seeds}
        self.oom_seeds = {int(s) for s in oom_seeds}
        self.step_delay = float(step_delay)
        self.episode_seed = None
        self.steps = 0

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.episode_seed = seed
            self.flaky = random.Random(seed) if seed % 1_000_003 in self.flaky_seeds else None
        self.steps = 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        self.steps += 1
        if self.flaky is not None and self.flaky.random() < self.flaky_probability:
            print(f"rlmesh_faulty: flaky lane (seed {self.episode_seed}) exits at step {self.steps}", file=sys.stderr,
                  flush=True)
            os._exit(EXIT_CODE)
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


def make(die_seeds=(), hang_seeds=(), step_delay=0.0, oom_seeds=(), flaky_seeds=(), flaky_probability=0.0,
         refuse_if=None):
    """CartPole-v1 that fails on the given seeds (see the module docstring); with ``refuse_if``, a
    path, making the env fails while that file exists (a sandbox that cannot start again)."""
    if refuse_if is not None and os.path.exists(refuse_if):
        raise RuntimeError(f"rlmesh_faulty: refusing to make the env ({refuse_if} exists)")
    return FaultyWrapper(gym.make("CartPole-v1"), die_seeds, hang_seeds, step_delay, oom_seeds, flaky_seeds,
                         flaky_probability)
