"""An entry file away from the root, as LightwheelAI/leisaac_env:envs/so101_pick_orange.py is
(a test fixture: the task is Pendulum, the layout is the point). The repository has no env.py.

It returns a bare gym.Env, which LeRobot reads as {spec.id: {0: env}}, and imports a sibling.
"""

import gymnasium as gym

from so101_common import EPISODE_STEPS


def make_env(n_envs=1, use_async_envs=False):
    return gym.make("Pendulum-v1", max_episode_steps=EPISODE_STEPS)
