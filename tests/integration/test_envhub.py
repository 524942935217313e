"""The EnvHub loader (server side, in process): LeRobot's normalization, cfg, entry files,
forkserver workers and the closing of unselected tasks, on the Hub fixture repositories."""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest

from rlmesh.errors import SourceError
from rlmesh.server.envhub import HubConfig, SingleLaneEnv, load_envhub, normalize
from rlmesh.server.envhub_selector import HubSelector, parse_selector

FIXTURES = Path(__file__).parents[1] / "docker" / "hub_fixture"
DOCS_CARTPOLE = str(FIXTURES / "envhub-docs--cartpole-env")
LEISAAC = str(FIXTURES / "lightwheel--leisaac-env")
ENTRY_MODULES = ("env", "so101_pick_orange", "so101_common", "multitask", "cfg_required", "cfg_optional",
                 "async_forkserver", "namespaced")


@pytest.fixture(autouse=True)
def isolated_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The loader puts the repository on sys.path and PYTHONPATH and imports its entry file: undo that."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    yield
    for name in ENTRY_MODULES:
        sys.modules.pop(name, None)


def load(directory: str, selector: str | None, num_envs: int | None = None, mode: str = "sync",
         **kwargs: object) -> gym.Env | gym.vector.VectorEnv:
    return load_envhub(directory, selector=selector, num_envs=num_envs, vectorization_mode=mode, kwargs=kwargs)


@pytest.mark.parametrize("selector", [None, "env.py", "hub_env/0", "hub_env", "env.py:hub_env/0"])
def test_lerobot_docs_cartpole_a_bare_vector_env_is_hub_env_0(selector: str | None) -> None:
    env = load(DOCS_CARTPOLE, selector)
    try:
        assert isinstance(env, SingleLaneEnv) and env.observation_space == gym.make("CartPole-v1").observation_space
        env.reset(seed=0)
        env.step(1)
    finally:
        env.close()


def test_lerobot_docs_cartpole_wrong_task_lists_what_exists() -> None:
    with pytest.raises(SourceError, match=r"task '1' not found in suite 'hub_env'; available: \['0'\]"):
        load(DOCS_CARTPOLE, "hub_env/1")


def test_an_entry_file_away_from_the_root_with_a_sibling_import_and_its_spec_id_as_suite() -> None:
    for selector in ("envs/so101_pick_orange.py", "envs/so101_pick_orange.py:Pendulum-v1/0"):
        env = load(LEISAAC, selector)
        try:
            assert env.spec is not None and env.spec.id == "Pendulum-v1" and env.spec.max_episode_steps == 50
        finally:
            env.close()
    with pytest.raises(SourceError, match=r"has no env.py: name its entry file, e.g. .*envs/async_forkserver.py"):
        load(LEISAAC, None)


def test_a_namespaced_spec_id_is_its_suite_and_no_selector_picks_it() -> None:
    env = load(LEISAAC, "envs/namespaced.py")
    try:
        assert env.spec is not None and env.spec.id == "fixture/Coin-v0"
    finally:
        env.close()


def test_unselected_tasks_are_closed_at_once_and_the_selected_one_stays_open() -> None:
    env = load(LEISAAC, "envs/multitask.py:suite_1/1")
    closed = sys.modules["multitask"].CLOSED
    try:
        assert sorted(closed) == ["suite_1/0", "suite_2/0"]  # each once, right after selection
        assert env.observation_space == gym.make("Acrobot-v1").observation_space
        env.reset(seed=0)
    finally:
        env.close()
    assert sorted(closed) == ["suite_1/0", "suite_1/1", "suite_2/0"]


def test_no_selector_with_several_tasks_lists_every_one_and_closes_them_all() -> None:
    with pytest.raises(SourceError) as err:
        load(LEISAAC, "envs/multitask.py")
    assert str(err.value).splitlines()[1:] == ["  hf://owner/repo@<sha>:suite_1/0", "  hf://owner/repo@<sha>:suite_1/1",
                                               "  hf://owner/repo@<sha>:suite_2/0"]
    assert sorted(sys.modules["multitask"].CLOSED) == ["suite_1/0", "suite_1/1", "suite_2/0"]


def test_task_keys_compare_as_ints_or_as_strings() -> None:
    cart, acro = gym.make("CartPole-v1"), gym.make("Acrobot-v1")
    catalog = normalize({"s": {0: cart, "a": acro}})
    from rlmesh.server.envhub import _select

    assert _select(catalog, "s", "0") is cart and _select(catalog, "s", "a") is acro
    assert normalize(cart) == {"CartPole-v1": {0: cart}}
    vec = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")])
    assert normalize(vec) == {"hub_env": {0: vec}}  # no spec: LeRobot's default name
    with pytest.raises(SourceError, match="several tasks that read as '0'"):
        _select(normalize({"s": {0: cart, "0": acro}}), "s", "0")


@pytest.mark.parametrize("entry", ["envs/cfg_required.py", "envs/cfg_optional.py"])
def test_cfg_reaches_make_env_as_an_object_read_by_attribute(entry: str) -> None:
    env = load(LEISAAC, entry, cfg={"episode_length": 7})
    try:
        env.reset(seed=0)
        flags = [env.step(0)[3] for _ in range(7)]
        assert flags == [False] * 6 + [True]  # truncated at cfg.episode_length
    finally:
        env.close()


def test_nested_cfg_picks_suite_and_task() -> None:
    env = load(LEISAAC, "envs/cfg_required.py:picked/3",
               cfg={"episode_length": 4, "task": {"suite": "picked", "id": 3}})
    env.close()


def test_a_required_cfg_that_is_missing_is_named_and_an_optional_one_is_not_passed() -> None:
    with pytest.raises(SourceError, match=r"make_env in envs/cfg_required.py requires cfg.*cfg=\{"):
        load(LEISAAC, "envs/cfg_required.py")
    env = load(LEISAAC, "envs/cfg_optional.py")
    try:
        assert env.spec is None or env.spec.max_episode_steps in (None, 500)
    finally:
        env.close()
    with pytest.raises(SourceError, match=r"does not accept \['episode_length'\].*rlmesh extension"):
        load(LEISAAC, "envs/cfg_optional.py", episode_length=3)
    with pytest.raises(SourceError, match="cfg must be a JSON object"):
        load(LEISAAC, "envs/cfg_optional.py", cfg=[7])


def test_hub_config_reads_by_attribute_and_item_recursively_and_pickles() -> None:
    cfg = HubConfig({"a": 1, "nested": {"b": [{"c": 2}]}})
    assert cfg.a == cfg["a"] == 1 and cfg.nested.b[0].c == 2 and cfg["nested"]["b"][0]["c"] == 2
    assert getattr(cfg, "missing", "default") == "default"
    with pytest.raises(AttributeError, match=r"cfg has no field 'missing' \(it has \['a', 'nested'\]\)"):
        _ = cfg.missing
    cfg.d = {"e": 3}
    assert cfg.d.e == 3
    for dumps in (pickle.dumps, cloudpickle.dumps):
        back = pickle.loads(dumps(cfg))
        assert back == cfg and back.nested.b[0].c == 2


def test_async_forkserver_workers_import_the_entry_file() -> None:
    # AsyncVectorEnv(context="forkserver") workers unpickle make_lane and Coin by reference: they
    # must import the entry file by its module name (the old loader named it rlmesh_envhub_env,
    # which no worker could import).
    envs = load(LEISAAC, "envs/async_forkserver.py", num_envs=2, mode="async")
    try:
        assert isinstance(envs, gym.vector.AsyncVectorEnv)
        obs, _ = envs.reset(seed=0)
        obs, rewards, *_ = envs.step(np.array([1, 0]))
        assert obs.tolist() == [[1.0], [1.0]] and rewards.tolist() == [1.0, 0.0]
    finally:
        envs.close()


def test_an_entry_file_linked_out_of_the_repository_is_refused(tmp_path: Path) -> None:
    repo, outside = tmp_path / "repo", tmp_path / "outside.py"
    repo.mkdir()
    outside.write_text("def make_env(n_envs=1, use_async_envs=False):\n    raise SystemExit('ran')\n")
    (repo / "env.py").symlink_to(outside)
    with pytest.raises(SourceError, match="resolves outside the repository"):
        load(str(repo), None)


@pytest.mark.parametrize(("text", "want"), [
    ("env.py", HubSelector("env.py")),
    ("envs/so101_pick_orange.py", HubSelector("envs/so101_pick_orange.py")),
    ("suite_1", HubSelector(None, "suite_1")),
    ("suite_1/0", HubSelector(None, "suite_1", "0")),
    ("envs/task_a.py:suite_1/0", HubSelector("envs/task_a.py", "suite_1", "0")),
    ("env.py/0", HubSelector(None, "env.py", "0")),  # only a selector whose first part ends in .py is a file
])
def test_selector_grammar(text: str, want: HubSelector) -> None:
    assert parse_selector(text) == want and str(want) == text


@pytest.mark.parametrize(("text", "match"), [
    ("../env.py", "'..' part"), ("envs/../../x.py", "'..' part"), ("/etc/env.py", "absolute"),
    ("a//b.py", "empty part"), ("./env.py", "'.' part"), (".git/env.py", "not hidden"),
    ("x.y.py", "module name"), ("env.py:", "empty"), (":s", "entry file ending in .py"),
    ("env.py:s:t", "at most two parts"), ("s/t/u", "task 't/u'"), ("s/", "task '' is empty"),
])
def test_hostile_selectors_are_refused(text: str, match: str) -> None:
    with pytest.raises(SourceError, match=match):
        parse_selector(text)
