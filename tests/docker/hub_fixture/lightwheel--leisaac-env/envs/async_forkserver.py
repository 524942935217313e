"""AsyncVectorEnv with forkserver workers, as LeRobot's own configs build them. The workers
unpickle make_lane and Coin by reference, so they must import this module by its name."""

import functools

import gymnasium as gym
import numpy as np


class Coin(gym.Env):
    """Guess a coin: observation is the step count, reward 1 for heads (action 1)."""

    def __init__(self, length=5):
        self.observation_space = gym.spaces.Box(0, length, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.length = length
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.full(1, self.t, np.float32), float(action), False, self.t >= self.length, {}


def make_lane(length):
    return Coin(length)


def make_env(n_envs=1, use_async_envs=False):
    fns = [functools.partial(make_lane, 5) for _ in range(n_envs)]
    if use_async_envs:
        return gym.vector.AsyncVectorEnv(fns, context="forkserver")
    return gym.vector.SyncVectorEnv(fns)
