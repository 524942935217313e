"""A stand-in for an EnvHub repository's env.py (LeRobot convention). A test fixture named
lerobot/cartpole-env in the tests' Hub cache: it is not the Hub's lerobot/cartpole-env."""

import gymnasium as gym


def make_env(n_envs=1, use_async_envs=False, max_episode_steps=500):
    def one():
        return gym.make("CartPole-v1", max_episode_steps=max_episode_steps)

    vec_cls = gym.vector.AsyncVectorEnv if use_async_envs else gym.vector.SyncVectorEnv
    return {
        "cartpole_suite": {0: vec_cls([one] * n_envs), 1: vec_cls([one] * n_envs)},
        "other_suite": {"a": vec_cls([one] * n_envs)},
    }
