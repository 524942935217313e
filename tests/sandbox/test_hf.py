"""hf:// sources against a local Hugging Face cache, offline: never huggingface.co."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from rlmesh.errors import SandboxStartError, SourceError
from rlmesh.numpy import AsyncSandboxEnv, SandboxEnv, SandboxVectorEnv

from .test_sandbox import _same

SHA = "0123456789abcdef0123456789abcdef01234567"
REPO = "lerobot/cartpole-env"


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A Hub cache in huggingface_hub's layout, with HF_HUB_OFFLINE=1 so nothing is fetched."""
    cache = tmp_path / "hub"
    repo_dir = cache / f"models--{REPO.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / SHA
    shutil.copytree(Path(__file__).parent / "hub_fixture", snapshot)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(SHA)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
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


@pytest.mark.parametrize(
    ("source", "kwargs", "match"),
    [
        ("hf://lerobot/cartpole-env:cartpole_suite/0", {}, "trust_remote_code=True"),
        ("hf://lerobot/cartpole-env:cartpole_suite/0", {"trust_remote_code": True}, "not pinned"),
        ("hf://lerobot/cartpole-env@main", {"trust_remote_code": True}, "not pinned"),
        ("hf://lerobot/cartpole-env@abc123", {"trust_remote_code": True}, "not pinned"),
        ("hf://lerobot", {"trust_remote_code": True, "allow_unpinned_hf": True}, "malformed repository"),
        ("hf://a/b/c", {"trust_remote_code": True, "allow_unpinned_hf": True}, "malformed repository"),
        ("hf://-bad/repo", {"trust_remote_code": True, "allow_unpinned_hf": True}, "malformed repository"),
        ("hf://owner/re--po", {"trust_remote_code": True, "allow_unpinned_hf": True}, "malformed repository"),
        ("hf://owner/repo@", {"trust_remote_code": True, "allow_unpinned_hf": True}, "malformed revision"),
        ("hf://owner/repo@a..b", {"trust_remote_code": True, "allow_unpinned_hf": True}, "malformed revision"),
        ("hf://owner/repo:", {"trust_remote_code": True, "allow_unpinned_hf": True}, "malformed selector"),
        ("hf://owner/repo:s/t/u", {"trust_remote_code": True, "allow_unpinned_hf": True}, "malformed selector"),
        ("CartPole-v1", {"trust_remote_code": True}, "hf:// sources only"),
        ("CartPole-v1", {"allow_unpinned_hf": True}, "hf:// sources only"),
        ("ftp://x/y", {}, "unknown source scheme"),
        ("docker://Not A Ref", {}, "not a valid image reference"),
        ("gym://not an id", {}, "not a Gymnasium id"),
    ],
)
def test_source_gates_fail_before_anything_runs(source: str, kwargs: dict, match: str) -> None:
    # No Hub cache and no network: these must fail in the constructor, before any fetch or build.
    with pytest.raises(SourceError, match=match) as err:
        AsyncSandboxEnv(source, **kwargs)
    assert isinstance(err.value, ValueError)


def test_task_keys_compare_as_strings_and_single_entries_are_automatic() -> None:
    from rlmesh.server.envhub import _select

    env = gym.make("CartPole-v1")
    assert _select({"s": {0: env}}, None, None) is env
    assert _select({"s": {0: env}}, "s", "0") is env
    with pytest.raises(SourceError, match="available"):
        _select({"s": {0: env, 1: env}}, "s", None)
    np.testing.assert_equal(True, True)
