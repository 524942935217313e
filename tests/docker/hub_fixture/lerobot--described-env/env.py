"""A test fixture named lerobot/described-env in the tests' Hub cache (not a Hub repository): a
multi-task repository whose tasks describe themselves, as LeRobot's envs do, for language-
conditioned policies. Suite "pick" describes its tasks with a ``task_description`` attribute,
suite "talk" with ``info["task"]`` at reset. Every task is CartPole, reporting
``info["is_success"]`` True at its 5th step only (success counted at any step, not the last)."""

import gymnasium as gym


class Described(gym.Wrapper):
    def __init__(self, env, description, via_info):
        super().__init__(env)
        self._description = description
        self._via_info = via_info
        if not via_info:
            self.task_description = description
        self._t = 0

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._t = 0
        if self._via_info:
            info = dict(info, task=self._description)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._t += 1
        return obs, reward, terminated, truncated, dict(info, is_success=self._t == 5)


def make_env(n_envs=1, use_async_envs=False):
    def task(description, via_info=False):
        def one():
            return Described(gym.make("CartPole-v1"), description, via_info)

        return gym.vector.SyncVectorEnv([one] * n_envs)

    return {
        "pick": {"red": task("pick up the red cube"), "blue": task("pick up the blue cube")},
        "talk": {"hello": task("say hello", via_info=True)},
    }
