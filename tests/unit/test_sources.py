"""Source strings: what each form parses to, and the gates that fail before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest

from rlmesh.errors import SourceError
from rlmesh.numpy import AsyncSandboxEnv
from rlmesh.protocol.options import is_gym_id
from rlmesh.sandbox.sources import (
    GymSource,
    HubSource,
    ImageSource,
    check_snapshot,
    factory_module_found,
    parse_source,
)
from rlmesh.server.envhub import _select

SHA = "0123456789abcdef0123456789abcdef01234567"


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
        # Entry files: nothing outside the repository, no empty part.
        ("hf://owner/repo:../env.py", {"trust_remote_code": True, "allow_unpinned_hf": True}, "'..' part"),
        ("hf://owner/repo:envs/../../x.py", {"trust_remote_code": True, "allow_unpinned_hf": True}, "'..' part"),
        ("hf://owner/repo:/etc/env.py", {"trust_remote_code": True, "allow_unpinned_hf": True}, "absolute"),
        ("hf://owner/repo:envs//x.py", {"trust_remote_code": True, "allow_unpinned_hf": True}, "empty part"),
        ("hf://owner/repo:.git/x.py", {"trust_remote_code": True, "allow_unpinned_hf": True}, "not hidden"),
        ("hf://owner/repo:env.py:", {"trust_remote_code": True, "allow_unpinned_hf": True}, "is empty"),
        ("hf://owner/repo::suite/0", {"trust_remote_code": True, "allow_unpinned_hf": True}, "ending in .py"),
        ("hf://owner/repo:a.py:s:t", {"trust_remote_code": True, "allow_unpinned_hf": True}, "at most two"),
        # Near misses of hf:// are caught on the host (hf:/ once started a container before failing).
        ("hf:/owner/repo", {}, r"did you mean 'hf://owner/repo'\?"),
        ("hf:/owner/repo@abc:env.py", {"trust_remote_code": True}, r"did you mean 'hf://owner/repo@abc:env.py'\?"),
        ("hf:owner/repo", {}, r"did you mean 'hf://owner/repo'\?"),
        ("hf//owner/repo", {}, r"did you mean 'hf://owner/repo'\?"),
        ("hf:///owner/repo", {"trust_remote_code": True}, r"did you mean 'hf://owner/repo'\?"),
        ("HF://owner/repo", {}, r"did you mean 'hf://owner/repo'\?"),
        # Short hashes, branches and tags (LeRobot's examples) are refused, with how to pin.
        ("hf://owner/repo@v1.0:envs/a.py", {"trust_remote_code": True},
         r"revision 'v1.0'.*hf://owner/repo@<40-hex sha>:envs/a.py.*model_info\('owner/repo', revision='v1.0'\)"),
        # A repository's web address, pasted: the source it means, pinned.
        ("https://huggingface.co/owner/repo", {"trust_remote_code": True},
         r"a web page of the Hugging Face Hub, not a source: an EnvHub repository is hf://owner/repo@<40-hex sha>"),
        ("https://huggingface.co/owner/repo/tree/" + "a" * 40, {}, "hf://owner/repo@" + "a" * 40 + r" \(pinned"),
        ("CartPole-v1", {"trust_remote_code": True}, "hf:// sources only"),
        ("CartPole-v1", {"allow_unpinned_hf": True}, "hf:// sources only"),
        ("ftp://x/y", {}, "unknown source scheme"),
        ("docker://Not A Ref", {}, "not a valid image reference"),
        ("gym://not an id", {}, "not a Gymnasium id"),
    ],
)
def test_source_gates_fail_before_anything_runs(source: str, kwargs: dict[str, Any], match: str) -> None:
    # No Hub cache and no network: these must fail in the constructor, before any fetch or build.
    with pytest.raises(SourceError, match=match) as err:
        AsyncSandboxEnv(source, **kwargs)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    ("source", "parsed"),
    [
        ("CartPole-v1", GymSource("CartPole-v1")),
        ("gym://CartPole-v1", GymSource("gym://CartPole-v1")),
        ("py://my_pkg:make_env", GymSource("py://my_pkg:make_env")),
        ("my_pkg:make_env", GymSource("my_pkg:make_env")),  # settled later, with the engine
        ("ALE/Pong-v5", GymSource("ALE/Pong-v5")),
        ("hf:name", GymSource("hf:name")),  # a module:factory, not a near miss of hf://
        ("hf:Ns/Env-v0", GymSource("hf:Ns/Env-v0")),  # a Gymnasium id with a module prefix
        ("docker://ghcr.io/org/env:1", ImageSource("ghcr.io/org/env:1", explicit=True)),
        ("image://env@sha256:" + "a" * 64, ImageSource("env@sha256:" + "a" * 64, explicit=True)),
    ],
)
def test_each_form_parses_to_its_kind(source: str, parsed: object) -> None:
    assert parse_source(source) == parsed


def test_a_pinned_hub_source_keeps_its_parts() -> None:
    hub = parse_source(f"hf://owner/repo@{SHA}:envs/a.py:suite/3", trust_remote_code=True)
    assert hub == HubSource("owner/repo", SHA, "suite", "3", "envs/a.py")
    assert hub.selector == "envs/a.py:suite/3"
    assert hub.with_commit("f" * 40, "other", "0") == f"hf://owner/repo@{'f' * 40}:envs/a.py:other/0"
    bare = parse_source("hf://owner/repo@main", trust_remote_code=True, allow_unpinned_hf=True)
    assert bare == HubSource("owner/repo", "main", None, None, None) and bare.selector is None
    assert bare.with_commit(SHA) == f"hf://owner/repo@{SHA}"


def test_py_of_a_gymnasium_id_is_refused() -> None:
    with pytest.raises(SourceError, match="gym://"):
        parse_source("py://CartPole-v1")


@pytest.mark.parametrize("source", [None, "", "   "])
def test_an_empty_source_is_refused(source: Any) -> None:
    with pytest.raises(SourceError, match="non-empty string"):
        parse_source(source)


@pytest.mark.parametrize(
    ("source", "gym_id"),
    [
        ("CartPole-v1", True),
        ("gym://anything", True),
        ("ALE/Pong-v5", True),
        ("my_pkg:MyEnv-v0", True),
        ("my_pkg.sub:Ns/MyEnv-v12", True),
        ("Unversioned", True),
        ("my_pkg:make_env", False),
        ("my_pkg.sub:Factory", False),
        ("not an id", False),
        ("a/b/c-v0", False),
    ],
)
def test_is_gym_id(source: str, gym_id: bool) -> None:
    assert is_gym_id(source) is gym_id


def test_factory_module_found_runs_only_finders() -> None:
    assert factory_module_found("gymnasium.envs.classic_control:CartPoleEnv")
    assert not factory_module_found("rlmesh_no_such_module_xyz:make")
    assert not factory_module_found(":make")


def test_a_snapshot_link_out_of_the_repository_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "models--o--r"
    snapshot = repo / "snapshots" / SHA
    snapshot.mkdir(parents=True)
    (snapshot / "env.py").write_text("def make_env(n_envs=1, use_async_envs=False): ...\n")
    source = HubSource("o/r", SHA, None, None)
    check_snapshot(snapshot, source)
    (snapshot / "escape").symlink_to(tmp_path)
    with pytest.raises(SourceError, match="outside the repository"):
        check_snapshot(snapshot, source)
    (snapshot / "escape").unlink()
    with pytest.raises(SourceError, match="has no envs/a.py"):
        check_snapshot(snapshot, HubSource("o/r", SHA, None, None, "envs/a.py"))


def test_task_keys_compare_as_strings_and_single_entries_are_automatic() -> None:
    env = gym.make("CartPole-v1")
    assert _select({"s": {0: env}}, None, None) is env
    assert _select({"s": {0: env}}, "s", "0") is env
    with pytest.raises(SourceError, match="available"):
        _select({"s": {0: env, 1: env}}, "s", None)


def test_several_envs_without_a_selector_are_listed_as_sources() -> None:
    env = gym.make("CartPole-v1")
    with pytest.raises(SourceError) as err:
        _select({"s": {0: env, 1: env}, "t": {"a": env}}, None, None, "hf://o/r@" + SHA)
    assert str(err.value).splitlines() == [
        f"hf://o/r@{SHA} has 3 envs: choose one by naming it after the repository, hf://o/r@{SHA}:SUITE/TASK, one of:",
        f"  hf://o/r@{SHA}:s/0", f"  hf://o/r@{SHA}:s/1", f"  hf://o/r@{SHA}:t/a"]
