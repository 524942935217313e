"""Real environment packages in sandboxes: ale-py, MuJoCo (with Debian packages), MiniGrid, Box2D.

The wheels come from the test wheelhouse and the Debian packages from the cache that
``./scripts/dev test`` fills; nothing here reaches a registry.
"""

from __future__ import annotations

import gymnasium as gym
import pytest

from rlmesh.errors import ImageBuildError, SandboxStartError
from rlmesh.numpy import SandboxEnv, SandboxVectorEnv

from ..helpers import assert_same, assert_same_steps


def test_pong_four_lanes_match_in_process_for_200_steps() -> None:
    import ale_py

    gym.register_envs(ale_py)
    ref = gym.make_vec("ALE/Pong-v5", num_envs=4, vectorization_mode="sync")
    with SandboxVectorEnv("ALE/Pong-v5", num_envs=4, packages=["ale-py"], imports=["ale_py"]) as envs:
        assert envs.single_observation_space == ref.single_observation_space
        assert_same(envs.reset(seed=3), ref.reset(seed=3))
        assert_same_steps(envs, ref, 200, action_seed=1)


def test_a_missing_shared_library_points_at_system_packages() -> None:
    # Without libosmesa6, PyOpenGL cannot load its platform library when MuJoCo's env is made.
    with pytest.raises(SandboxStartError) as info:
        SandboxEnv("HalfCheetah-v5", packages=["gymnasium[mujoco]==1.3.0"], env={"MUJOCO_GL": "osmesa"},
                   render_mode="rgb_array")
    notes = "".join(getattr(info.value, "__notes__", []))
    assert "pass gl='osmesa'" in notes and '"libosmesa6"' in notes, notes


def test_an_unknown_debian_package_is_named() -> None:
    with pytest.raises(ImageBuildError, match="no-such-package-xyz"):
        SandboxEnv("CartPole-v1", system_packages=["no-such-package-xyz"])


def test_minigrid_through_wrappers_and_its_mission_space() -> None:
    import minigrid  # noqa: F401
    from minigrid.wrappers import ImgObsWrapper

    ref = ImgObsWrapper(gym.make("MiniGrid-Empty-5x5-v0"))
    with SandboxEnv("MiniGrid-Empty-5x5-v0", packages=["minigrid"], imports=["minigrid"],
                    wrappers=["minigrid.wrappers:ImgObsWrapper"]) as env:
        assert env.observation_space == ref.observation_space
        assert_same(env.reset(seed=2), ref.reset(seed=2))
        for t in range(30):
            assert_same(env.step(t % 3), ref.step(t % 3))
    with SandboxEnv("MiniGrid-Empty-5x5-v0", packages=["minigrid"], imports=["minigrid"]) as env:
        mission = env.observation_space["mission"]  # MiniGrid's own MissionSpace, served as opaque
        obs, _ = env.reset(seed=2)
        assert mission.contains(obs["mission"]) and type(mission).__name__ == "OpaqueSpace"


def test_lunar_lander_box2d_matches_in_process() -> None:
    ref = gym.make("LunarLander-v3")
    with SandboxEnv("LunarLander-v3", packages=["gymnasium[box2d]"]) as env:
        assert_same(env.reset(seed=4), ref.reset(seed=4))
        space = ref.action_space
        space.seed(4)
        for _ in range(200):
            a = space.sample()
            got, want = env.step(a), ref.step(a)
            assert_same(got, want)
            if want[2] or want[3]:
                assert_same(env.reset(), ref.reset())
