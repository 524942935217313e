"""LeRobot's multi-task example (docs/source/envhub.mdx, "Multi-Task Environments") with real
Gymnasium tasks. Each vector env records its close() in CLOSED, for the tests to count."""

import gymnasium as gym

CLOSED = []


class Recorded(gym.vector.VectorWrapper):
    def __init__(self, env, name):
        super().__init__(env)
        self.name = name

    def close(self, **kwargs):
        CLOSED.append(self.name)
        return super().close(**kwargs)


def make_env(n_envs=1, use_async_envs=False):
    env_cls = gym.vector.AsyncVectorEnv if use_async_envs else gym.vector.SyncVectorEnv

    def vec(env_id, name):
        return Recorded(env_cls([lambda: gym.make(env_id) for _ in range(n_envs)]), name)

    return {
        "suite_1": {0: vec("CartPole-v1", "suite_1/0"), 1: vec("Acrobot-v1", "suite_1/1")},
        "suite_2": {0: vec("MountainCar-v0", "suite_2/0")},
    }
