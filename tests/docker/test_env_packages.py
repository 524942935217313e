"""Env packages in one build (#28): missing shared libraries found and installed, GL presets,
registration hooks and entry points, messages that name the real cause, and locked versions.

Real packages from the test wheelhouse (pygame 2.6, MuJoCo, MinAtar) and Debian packages from
the cache that ``./scripts/dev test`` fills; nothing here reaches a registry.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from rlmesh.errors import ImageBuildError, SandboxStartError
from rlmesh.evaluation.runner import installed_difference
from rlmesh.numpy import SandboxEnv
from rlmesh.sandbox import housekeeping

from ..helpers import assert_same

HERE = Path(__file__).parent


def _row(image_id: str | None) -> dict[str, object]:
    assert image_id is not None
    return asyncio.run(housekeeping.inspect_image(image_id))


def test_missing_shared_libraries_are_found_and_installed_in_one_build() -> None:
    # pygame 2.6's scrap module needs libX11, and its bundled fluidsynth GLib: the base has neither.
    with SandboxEnv("CartPole-v1", packages=["pygame==2.6.1"], imports=["pygame.scrap"]) as env:
        env.reset(seed=0)
        row = _row(env.image_id)
    assert row["found_libraries"] == {"libX11.so.6": "libx11-6", "libglib-2.0.so.0": "libglib2.0-0",
                                      "libgthread-2.0.so.0": "libglib2.0-0"}
    assert row["system_packages"] == []  # none listed: all found
    assert "pygame==2.6.1" in row["installed"]  # type: ignore[operator]


def test_without_the_found_libraries_the_import_check_names_the_library_not_a_package() -> None:
    with pytest.raises(ImageBuildError) as info:
        SandboxEnv("CartPole-v1", packages=["pygame==2.6.1"], imports=["pygame.scrap"], ignore_libraries=["*"])
    text = str(info.value).splitlines()[0]
    assert "libX11.so.6" in text and 'system_packages=["libx11-6"]' in text
    assert "packages=['pygame" not in text  # the old advice: a Python package that was there already


def test_a_listed_package_and_the_found_ones_build_together() -> None:
    with SandboxEnv("CartPole-v1", packages=["pygame==2.6.1"], imports=["pygame.scrap"],
                    system_packages=["auto", "libxcb1"]) as env:
        env.reset(seed=0)
        row = _row(env.image_id)
    assert row["system_packages"] == ["libxcb1"] and "libX11.so.6" in row["found_libraries"]  # type: ignore[operator]


@pytest.mark.parametrize("gl", ["egl", "osmesa"])
def test_gl_presets_render_mujoco_without_a_gpu(gl: str) -> None:
    with SandboxEnv("HalfCheetah-v5", packages=["gymnasium[mujoco]==1.3.0"], render_mode="rgb_array", gl=gl) as env:
        env.reset(seed=0)
        for _ in range(3):
            env.step(env.action_space.sample())
        frame = env.render()
        assert frame.shape == (480, 480, 3) and frame.dtype == np.uint8
        assert frame.std() > 10  # a scene, not a blank frame


def test_an_egl_failure_names_the_preset() -> None:
    # MUJOCO_GL=egl without the EGL libraries: once "'NoneType' object has no attribute 'eglQueryString'"
    # with no note (the hint looked for 'gl...').
    with pytest.raises(SandboxStartError) as info:
        SandboxEnv("HalfCheetah-v5", packages=["gymnasium[mujoco]==1.3.0"], env={"MUJOCO_GL": "egl"},
                   render_mode="rgb_array")
    notes = "".join(getattr(info.value, "__notes__", []))
    assert "gl='egl'" in notes and "libgl1-mesa-dri" in notes, (str(info.value), notes)


def test_minatar_registers_through_its_entry_point() -> None:
    from minatar.gym import register_envs

    register_envs()
    ref = gym.make("MinAtar/Breakout-v1")
    with SandboxEnv("MinAtar/Breakout-v1", packages=["minatar"]) as env:  # no imports=: the entry point
        assert_same(env.reset(seed=3), ref.reset(seed=3))
        for action in [0, 1, 2, 1, 0, 2] * 5:
            assert_same(env.step(action), ref.step(action))
    with SandboxEnv("MinAtar/Breakout-v1", packages=["minatar"], imports=["minatar.gym:register_envs"]) as env:
        assert_same(env.reset(seed=3), ref.reset(seed=3))


def test_a_missing_dependency_of_an_import_is_named() -> None:
    # needs_dependency imports a module no installed package provides: the message names that
    # module, not the package that was imported (which is there).
    with pytest.raises(ImageBuildError) as info:
        SandboxEnv("CartPole-v1", packages=[str(HERE / "needs_dependency_pkg")], imports=["needs_dependency"])
    text = str(info.value).splitlines()[0]
    assert "'rlmesh_absent_dependency'" in text and "(which it imports)" in text
    assert "packages=['needs-dependency']" not in text and "add the package that provides 'needs_dependency'" not in text


def test_a_hook_that_is_not_a_function_is_named() -> None:
    with pytest.raises(ImageBuildError, match="has no function 'no_such_hook'"):
        SandboxEnv("CartPole-v1", imports=["gymnasium:no_such_hook"])


def test_a_lock_file_rebuilds_the_same_distributions(tmp_path: Path) -> None:
    with SandboxEnv("CartPole-v1", packages=["gymnasium[classic-control]"]) as env:
        image = env.image_id
        first = subprocess.run(["docker", "exec", env.container_id, "python", "-m", "pip", "freeze", "--all"],
                               capture_output=True, text=True, check=True).stdout
    lock = subprocess.run([sys.executable, "-m", "rlmesh", "image", "lock", str(image)], capture_output=True,
                          text=True, check=True).stdout
    assert "gymnasium==" in lock and "pygame" in lock
    (tmp_path / "requirements.lock").write_text(lock)
    with SandboxEnv("CartPole-v1", packages=[str(tmp_path / "requirements.lock")]) as env:
        again = subprocess.run(["docker", "exec", env.container_id, "python", "-m", "pip", "freeze", "--all"],
                               capture_output=True, text=True, check=True).stdout
        assert env.image_id != image  # another image (another key), the same distributions
        rebuilt = env.image_id
    assert again == first
    # A resumed evaluation on another image names the versions that differ (none here).
    assert asyncio.run(installed_difference(str(image), str(rebuilt))) is None
    with SandboxEnv("CartPole-v1", packages=["pygame==2.6.1"], imports=["pygame.scrap"]) as env:
        other = env.image_id
    assert "pygame (none) -> 2.6.1" in str(asyncio.run(installed_difference(str(image), str(other))))
    assert asyncio.run(installed_difference("sha256:" + "0" * 64, str(other))) is None  # gone: nothing to compare
