"""Probe envs that report what the sandbox looks like from inside."""

from __future__ import annotations

import os
import socket
import sys
import time

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

    # Reached with env.call(...): what an attacker's env code could try.
    def read_file(self, path):
        with open(path) as f:
            return f.read(4096)

    def writable_mounts(self):
        """(mount point, type, options) of every mount this process could write to."""
        out = []
        with open("/proc/self/mounts") as f:
            for line in f:
                _, point, fstype, options, *_ = line.split()
                if "rw" in options.split(",") and os.access(point, os.W_OK):
                    out.append([point, fstype, options])
        return out

    def fork_bomb(self):
        """Fork until the kernel refuses; the children wait to be killed with the container."""
        children = 0
        while True:
            try:
                pid = os.fork()
            except OSError as exc:
                return {"children": children, "error": type(exc).__name__}
            if pid == 0:
                while True:
                    time.sleep(60)
            children += 1

    def memory_bomb(self):
        """Allocate until something gives."""
        hoard = []
        while True:
            hoard.append(bytearray(64 << 20))

    def gymnasium_version(self):
        return gym.__version__

    def kernel(self):
        """The kernel release the env sees (gVisor reports its own)."""
        return os.uname().release

    def hang(self, seconds=3600):
        time.sleep(seconds)


def make_probe(**kwargs):
    """A module:factory source."""
    return ProbeEnv(**kwargs)


def make_spoofer(**kwargs):
    """An env that prints the server's ready line long before the server is ready."""
    print("rlmesh-server ready on unix:///rlmesh/env.sock", flush=True)
    print("rlmesh-server ready on unix:///rlmesh/env.sock", file=sys.stderr, flush=True)
    time.sleep(1.5)
    return ProbeEnv(**kwargs)


def make_broken(**kwargs):
    """A factory that fails, to test start-up errors."""
    raise RuntimeError("probe env refuses to start")


gym.register("RlmeshProbe-v0", entry_point="rlmesh_probe:ProbeEnv")
