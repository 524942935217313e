"""make_env with an optional cfg (None unless one is given, as LeRobot calls it)."""

import gymnasium as gym


def make_env(n_envs=1, use_async_envs=False, cfg=None):
    steps = 500 if cfg is None else cfg.episode_length
    return gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1", max_episode_steps=steps) for _ in range(n_envs)])
