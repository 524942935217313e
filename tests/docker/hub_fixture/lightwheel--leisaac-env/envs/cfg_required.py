"""make_env(n_envs, use_async_envs, cfg) with cfg required, read by attribute as LeRobot's
EnvConfig is (and by item, and nested)."""

import gymnasium as gym


def make_env(n_envs, use_async_envs, cfg):
    assert cfg["episode_length"] == cfg.episode_length
    one = lambda: gym.make("CartPole-v1", max_episode_steps=cfg.episode_length)  # noqa: E731
    vec = gym.vector.SyncVectorEnv([one for _ in range(n_envs)])
    if getattr(cfg, "task", None) is not None:
        return {cfg.task.suite: {cfg.task.id: vec}}
    return vec
