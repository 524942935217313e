"""An env that does what processes do to themselves: signals, children, orphans."""

from __future__ import annotations

import os
import signal
import time

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class LifecycleEnv(gym.Env):
    """CartPole-sized spaces; its methods (reached with ``env.call``) act on its own process."""

    metadata = {"render_modes": []}

    def __init__(self):
        self.observation_space = spaces.Box(-1, 1, (2,), np.float32)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {}

    def pid(self):
        """This process's pid (1 when the server runs as the container's init)."""
        return os.getpid()

    def orphan(self, n):
        """Leave ``n`` grandchildren that exit once their parent has: orphans, as a daemonizing
        subprocess leaves them. Returns their pids."""
        read, write = os.pipe()
        pids = []
        for _ in range(n):
            child = os.fork()
            if child == 0:  # the child forks the grandchild, then exits at once
                grandchild = os.fork()
                if grandchild == 0:
                    time.sleep(0.2)  # outlives its parent: reparented, then it exits
                    os._exit(0)
                os.write(write, f"{grandchild}\n".encode())
                os._exit(0)
            os.waitpid(child, 0)  # the child is reaped; the grandchild is not this process's
        os.close(write)
        with os.fdopen(read) as f:
            pids = [int(line) for line in f.read().split()]
        return pids

    def zombies(self):
        """The pids of the zombie processes in this container."""
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                            found.append(int(name))
                except (OSError, IndexError):
                    pass
        return found

    def signal_self(self, signum):
        """Send this process ``signum`` and report what happened (a default action may end it)."""
        os.kill(os.getpid(), signum)
        time.sleep(0.5)
        return "still running"

    def handler_runs(self):
        """Whether a handler the env installs for SIGUSR2 runs when it signals itself."""
        hits = []
        previous = signal.signal(signal.SIGUSR2, lambda s, f: hits.append(s))
        try:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.1)
        finally:
            signal.signal(signal.SIGUSR2, previous)
        return hits == [signal.SIGUSR2]


def make(**kwargs):
    """A module:factory source."""
    return LifecycleEnv(**kwargs)
