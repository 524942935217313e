"""hf:// sources against a local Hugging Face cache, offline: never huggingface.co.

The cache holds the repositories in hub_fixture/ (one folder per owner--name), in
huggingface_hub's layout. They are test fixtures written to LeRobot's convention, not the Hub's
repositories of those names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import rlmesh
from rlmesh.errors import SandboxStartError, SourceError
from rlmesh.numpy import AsyncSandboxEnv, SandboxEnv, SandboxVectorEnv

from .test_sandbox import _same

SHA = "0123456789abcdef0123456789abcdef01234567"
REPO = "lerobot/cartpole-env"  # the seed's example: {suite: {task: env}}
DOCS_REPO, DOCS_SHA = "envhub-docs/cartpole-env", "1" * 40  # LeRobot's documented env.py: a bare VectorEnv
LEISAAC, LEISAAC_SHA = "lightwheel/leisaac-env", "2" * 40  # entry files under envs/, no env.py
DESCRIBED, DESCRIBED_SHA = "lerobot/described-env", "3" * 40  # tasks that describe themselves, success mid-episode
FIXTURES = Path(__file__).parent / "hub_fixture"
SHAS = {REPO: SHA, DOCS_REPO: DOCS_SHA, LEISAAC: LEISAAC_SHA, DESCRIBED: DESCRIBED_SHA}


def snapshot_dir(cache: Path, repo: str) -> Path:
    """Where huggingface_hub keeps ``repo`` at its fixture commit."""
    return cache / f"models--{repo.replace('/', '--')}" / "snapshots" / SHAS[repo]


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A Hub cache in huggingface_hub's layout, with HF_HUB_OFFLINE=1 so nothing is fetched."""
    cache = tmp_path / "hub"
    for repo, sha in SHAS.items():
        repo_dir = cache / f"models--{repo.replace('/', '--')}"
        shutil.copytree(FIXTURES / repo.replace("/", "--"), snapshot_dir(cache, repo))
        (repo_dir / "refs").mkdir()
        (repo_dir / "refs" / "main").write_text(sha)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads both once, at import: a second test's cache must reach it too.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    yield cache


def test_docs_example_verbatim_single_env_parity(hub_cache: Path) -> None:
    env = SandboxEnv("hf://lerobot/cartpole-env:cartpole_suite/0", trust_remote_code=True, allow_unpinned_hf=True)
    ref = gym.make("CartPole-v1")
    try:
        assert isinstance(env, gym.Env) and env.observation_space == ref.observation_space
        _same(env.reset(seed=0), ref.reset(seed=0))
        for _ in range(8):  # a one-lane vector env presented as a single env
            obs, reward, terminated, truncated, info = env.step(1)
            want = ref.step(1)
            _same(obs, want[0])
            assert (reward, terminated, truncated) == want[1:4]
    finally:
        env.close()


async def test_pinned_vector_and_selector_reuse_the_image(hub_cache: Path) -> None:
    envs = SandboxVectorEnv(f"hf://{REPO}@{SHA}:cartpole_suite/1", num_envs=3, trust_remote_code=True)
    try:
        assert envs.num_envs == 3
        obs, _ = envs.reset(seed=5)
        assert obs.shape == (3, 4)
        image = envs._core.image
    finally:
        envs.close()
    # Another selector and other make_env kwargs: same image, nothing rebuilt.
    async with AsyncSandboxEnv(f"hf://{REPO}@{SHA}:other_suite/a", trust_remote_code=True,
                               max_episode_steps=2) as env:
        assert env.image == image
        await env.reset(seed=0)
        await env.step(0)
        *_, truncated, _ = await env.step(0)
        assert truncated is True


def test_unknown_task_lists_what_is_available(hub_cache: Path) -> None:
    with pytest.raises(SandboxStartError) as err:
        SandboxEnv(f"hf://{REPO}@{SHA}:cartpole_suite/7", trust_remote_code=True)
    first = str(err.value).splitlines()[0]  # the useful line comes first
    assert "task '7' not found" in first and "['0', '1']" in first
    with pytest.raises(SandboxStartError) as err:
        SandboxEnv(f"hf://{REPO}@{SHA}", trust_remote_code=True)  # two suites: must choose
    assert "cartpole_suite" in err.value.logs and "other_suite" in err.value.logs


def test_missing_revision_in_offline_cache_is_a_source_error(hub_cache: Path) -> None:
    with pytest.raises(SourceError, match="cannot fetch"):
        SandboxEnv(f"hf://{REPO}@{'f' * 40}:cartpole_suite/0", trust_remote_code=True)


def test_lerobot_docs_cartpole_bare_vector_env_with_no_selector_env_py_and_hub_env_0(hub_cache: Path) -> None:
    ref = gym.make("CartPole-v1")
    for selector in ("", ":env.py", ":hub_env/0"):
        with SandboxEnv(f"hf://{DOCS_REPO}@{DOCS_SHA}{selector}", trust_remote_code=True) as env:
            assert env.observation_space == ref.observation_space
            _same(env.reset(seed=3), ref.reset(seed=3))
            _same(env.step(1)[0], ref.step(1)[0])


def test_an_entry_file_under_envs_with_no_root_env_py(hub_cache: Path) -> None:
    source = f"hf://{LEISAAC}@{LEISAAC_SHA}:envs/so101_pick_orange.py"
    with SandboxEnv(source, trust_remote_code=True) as env:
        assert env.observation_space == gym.make("Pendulum-v1").observation_space
        env.reset(seed=0)
    with SandboxEnv(source + ":Pendulum-v1/0", trust_remote_code=True) as env:  # its spec id is its suite
        env.reset(seed=0)
    # No env.py at the root: said on the host, before any image is built, with the files to choose from.
    with pytest.raises(SourceError, match=r"has no env.py: name the entry file, e.g. .*:envs/async_forkserver.py"):
        SandboxEnv(f"hf://{LEISAAC}@{LEISAAC_SHA}", trust_remote_code=True)
    with pytest.raises(SourceError, match=r"has no envs/nothere.py: its Python files: \['envs/async_forkserver.py'"):
        SandboxEnv(f"hf://{LEISAAC}@{LEISAAC_SHA}:envs/nothere.py", trust_remote_code=True)


def test_lerobot_multi_task_example(hub_cache: Path) -> None:
    base = f"hf://{LEISAAC}@{LEISAAC_SHA}:envs/multitask.py"
    with SandboxEnv(f"{base}:suite_1/1", trust_remote_code=True) as env:
        assert env.observation_space == gym.make("Acrobot-v1").observation_space
        env.reset(seed=0)
    with SandboxVectorEnv(f"{base}:suite_2/0", num_envs=2, trust_remote_code=True) as envs:
        assert envs.single_observation_space == gym.make("MountainCar-v0").observation_space
        assert envs.reset(seed=0)[0].shape == (2, 2)
    with pytest.raises(SandboxStartError) as err:
        SandboxEnv(base, trust_remote_code=True)
    lines = str(err.value).splitlines()
    assert f"{base} has 3 envs: choose one by naming it after the repository, {base}:SUITE/TASK" in lines[0]
    assert [f"  {base}:{task}" for task in ("suite_1/0", "suite_1/1", "suite_2/0")] == lines[1:4]


def test_cfg_reaches_make_env_read_by_attribute_required_and_optional(hub_cache: Path) -> None:
    for entry in ("cfg_required", "cfg_optional"):
        with SandboxEnv(f"hf://{LEISAAC}@{LEISAAC_SHA}:envs/{entry}.py", cfg={"episode_length": 7},
                        trust_remote_code=True) as env:
            env.reset(seed=0)
            assert [env.step(0)[3] for _ in range(7)] == [False] * 6 + [True]
    with SandboxEnv(f"hf://{LEISAAC}@{LEISAAC_SHA}:envs/cfg_optional.py", trust_remote_code=True) as env:
        env.reset(seed=0)
        assert env.step(0)[3] is False
    with pytest.raises(SandboxStartError, match=r"make_env in envs/cfg_required.py requires cfg"):
        SandboxEnv(f"hf://{LEISAAC}@{LEISAAC_SHA}:envs/cfg_required.py", trust_remote_code=True)


def test_async_vector_env_with_forkserver_workers(hub_cache: Path) -> None:
    # The workers unpickle the entry file's functions by reference, so they import it by name.
    with SandboxVectorEnv(f"hf://{LEISAAC}@{LEISAAC_SHA}:envs/async_forkserver.py", num_envs=2,
                          vectorization_mode="async", trust_remote_code=True) as envs:
        envs.reset(seed=0)
        obs, rewards, *_ = envs.step(np.array([1, 0]))
        assert obs.tolist() == [[1.0], [1.0]] and rewards.tolist() == [1.0, 0.0]


def test_list_tasks_runs_make_env_in_a_sandbox_and_gives_pinned_sources(hub_cache: Path) -> None:
    base = f"hf://{LEISAAC}@{LEISAAC_SHA}:envs/multitask.py"
    tasks = rlmesh.list_tasks(base, trust_remote_code=True)
    assert tasks == [f"{base}:suite_1/0", f"{base}:suite_1/1", f"{base}:suite_2/0"]
    assert rlmesh.list_tasks(f"{base}:suite_1", trust_remote_code=True) == tasks[:2]
    with SandboxEnv(tasks[2], trust_remote_code=True) as env:  # each one is a source as it is
        assert env.observation_space == gym.make("MountainCar-v0").observation_space
    # Unpinned: the listed sources are pinned to the commit that was fetched.
    assert rlmesh.list_tasks(f"hf://{REPO}", trust_remote_code=True, allow_unpinned_hf=True) == [
        f"hf://{REPO}@{SHA}:cartpole_suite/0", f"hf://{REPO}@{SHA}:cartpole_suite/1", f"hf://{REPO}@{SHA}:other_suite/a",
    ]
    # The only env, named so that no selector can hold it (a namespaced spec id), is listed
    # without a selector, which picks it.
    namespaced = f"hf://{LEISAAC}@{LEISAAC_SHA}:envs/namespaced.py"
    assert rlmesh.list_tasks(namespaced, trust_remote_code=True) == [namespaced]
    # A source that names one env is returned as it is, and nothing starts.
    assert rlmesh.list_tasks(tasks[0], trust_remote_code=True) == [tasks[0]]
    assert rlmesh.list_tasks("CartPole-v1") == ["CartPole-v1"]
    # make_env's failure in the sandbox is reported with its cause.
    with pytest.raises(SandboxStartError, match="requires cfg"):
        rlmesh.list_tasks(f"hf://{LEISAAC}@{LEISAAC_SHA}:envs/cfg_required.py", trust_remote_code=True)
    assert rlmesh.list_tasks(f"hf://{LEISAAC}@{LEISAAC_SHA}:envs/cfg_required.py", trust_remote_code=True,
                             cfg={"episode_length": 3, "task": {"suite": "s", "id": 9}}) == [
        f"hf://{LEISAAC}@{LEISAAC_SHA}:envs/cfg_required.py:s/9"]


def test_rlmesh_hub_tasks_command(hub_cache: Path) -> None:
    cli = [sys.executable, "-m", "rlmesh.cli", "hub", "tasks"]
    out = subprocess.run([*cli, f"hf://{DOCS_REPO}@{DOCS_SHA}", "--trust-remote-code"],
                         capture_output=True, text=True, timeout=600, env=os.environ)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [f"hf://{DOCS_REPO}@{DOCS_SHA}:hub_env/0"]
    out = subprocess.run([*cli, f"hf://{DOCS_REPO}@{DOCS_SHA}"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 1 and "trust_remote_code=True" in out.stderr


@pytest.mark.parametrize("link", ["envs/escape.py", "envs/data"])
def test_a_symlink_out_of_the_snapshot_is_refused_before_anything_is_built(hub_cache: Path, tmp_path: Path,
                                                                           link: str) -> None:
    # The image build follows links (a snapshot is links into its blob store): one pointing
    # elsewhere would copy a host file into the sandbox.
    outside = tmp_path / "host-secret"
    outside.mkdir()
    (outside / "x.py").write_text("def make_env(n_envs=1, use_async_envs=False):\n    pass\n")
    target = outside / "x.py" if link.endswith(".py") else outside
    (snapshot_dir(hub_cache, LEISAAC) / link).symlink_to(target)
    with pytest.raises(SourceError, match=rf"{link} is a symlink to {target}, outside the repository"):
        SandboxEnv(f"hf://{LEISAAC}@{LEISAAC_SHA}:envs/escape.py", trust_remote_code=True)
