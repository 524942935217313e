"""A bare env whose spec id has a namespace (fixture/Coin-v0): its suite name holds a '/', which
no selector can name, so only "no selector" picks it."""

import gymnasium as gym

gym.register("fixture/Coin-v0", entry_point="async_forkserver:Coin", max_episode_steps=3)


def make_env(n_envs=1, use_async_envs=False):
    return gym.make("fixture/Coin-v0")
