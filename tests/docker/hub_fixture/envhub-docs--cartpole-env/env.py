"""LeRobot's documented CartPole env.py (docs/source/envhub.mdx, "Step 1"): a bare VectorEnv.

A test fixture, written to LeRobot's published convention; it is not the Hub repository.
"""

import gymnasium as gym


def make_env(n_envs: int = 1, use_async_envs: bool = False):
    def _make_single_env():
        return gym.make("CartPole-v1")

    env_cls = gym.vector.AsyncVectorEnv if use_async_envs else gym.vector.SyncVectorEnv
    return env_cls([_make_single_env for _ in range(n_envs)])
