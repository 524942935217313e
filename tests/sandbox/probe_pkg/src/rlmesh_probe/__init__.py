"""Probe envs that report what the sandbox looks like from inside."""

from __future__ import annotations

import os
import socket

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class ProbeEnv(gym.Env):
    """Reports the container's user, interfaces and filesystem in its reset info."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, render_mode=None, size=4):
        self.render_mode = render_mode
        self.size = int(size)
        self.observation_space = spaces.Box(0, 1, (self.size,), np.float32)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        try:
            with open("/probe-write", "w"):
                root_writable = True
        except OSError:
            root_writable = False
        with open("/tmp/probe-write", "w") as f:
            f.write("ok")
        info = {
            "uid": os.getuid(),
            "gid": os.getgid(),
            "interfaces": sorted(name for _, name in socket.if_nameindex()),
            "root_writable": root_writable,
            "size": self.size,
            "env_var": os.environ.get("RLMESH_PROBE", ""),
        }
        return self.np_random.random(self.size, dtype=np.float32), info

    def step(self, action):
        if action == 1 and os.environ.get("RLMESH_PROBE_CRASH"):
            os._exit(7)
        return self.np_random.random(self.size, dtype=np.float32), 1.0, False, False, {}

    def render(self):
        return np.full((8, 8, 3), 200, dtype=np.uint8)


def make_probe(**kwargs):
    """A module:factory source."""
    return ProbeEnv(**kwargs)


def make_broken(**kwargs):
    """A factory that fails, to test start-up errors."""
    raise RuntimeError("probe env refuses to start")


gym.register("RlmeshProbe-v0", entry_point="rlmesh_probe:ProbeEnv")
