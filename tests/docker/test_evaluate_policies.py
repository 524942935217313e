"""The evaluation harness's policies against real sandboxes: every observation space, stateful and
language-conditioned policies, success at any step, the run's identity on resume, and the messages."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import rlmesh
from rlmesh.errors import InvalidActionError
from rlmesh.evaluation import Episode, ResultsMismatchError
from rlmesh.numpy import SandboxEnv

from .conftest import OWNER_LABEL, ROOT
from .test_evaluate import FAULTY, FAULTY_PKG, lean, lean_batch, read_results
from .test_hf import (
    DESCRIBED,
    DESCRIBED_SHA,
    hub_cache,  # noqa: F401  (the fixture)
)

EVAL_ENVS_PKG = Path(__file__).parent / "eval_envs_pkg"
SPACES = "rlmesh_eval_envs:make_spaces"
HISTORY = "rlmesh_eval_envs:make_history"
TAXI = "Taxi-v4" if "Taxi-v4" in gym.registry else "Taxi-v3"  # v3 is deprecated from Gymnasium 1.4
DESCRIBED_TASKS = {"pick/red": "pick up the red cube", "pick/blue": "pick up the blue cube", "talk/hello": "say hello"}


def _spaces_env() -> gym.Env[Any, Any]:
    sys.path.insert(0, str(EVAL_ENVS_PKG / "src"))
    try:
        import rlmesh_eval_envs
    finally:
        sys.path.remove(str(EVAL_ENVS_PKG / "src"))
    return gym.wrappers.PassiveEnvChecker(rlmesh_eval_envs.make_spaces())


def _same(a: Any, b: Any) -> bool:
    """Equal as the env returned them: every leaf, recursively (a lane's np.int64 equals the env's int)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, str):
        return a == b
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def in_process(make: Callable[[], gym.Env[Any, Any]], seeds: Iterable[int], policy: Callable[[Any], Any]
               ) -> tuple[list[tuple[float, int]], list[Any]]:
    """(return, length) of each episode stepped in process, and every observation the policy saw."""
    results, seen = [], []
    for seed in seeds:
        env = make()
        obs, _ = env.reset(seed=seed)
        total, length, done = 0.0, 0, False
        while not done:
            seen.append(obs)
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += float(reward)
            length += 1
            done = terminated or truncated
        env.close()
        results.append((total, length))
    return results, seen


SPACE_CASES: list[tuple[str, Callable[[Any], Any], dict[str, Any]]] = [
    ("FrozenLake-v1", lambda o: int(o) % 4, {}),  # Discrete
    (TAXI, lambda o: int(o) % 6, {}),  # Discrete, 200-step episodes
    ("Blackjack-v1", lambda o: int(o[0] < 17), {}),  # a Tuple of Discrete
    (SPACES, lambda o: (int(o["cell"]) + len(o["word"]) + int(o["flags"][1]) + int(o["flags"][0].sum())) % 4,
     {"packages": [str(EVAL_ENVS_PKG)]}),  # a Dict of Discrete, Text and a Tuple of MultiBinary and Discrete
]


@pytest.mark.parametrize(("source", "policy", "options"), SPACE_CASES, ids=["FrozenLake", "Taxi", "Blackjack", "DictText"])
def test_a_plain_policy_gets_each_observation_as_the_env_returns_it(
        source: str, policy: Callable[[Any], Any], options: dict[str, Any]) -> None:
    seen: list[Any] = []

    def watching(obs: Any) -> Any:
        seen.append(obs)
        return policy(obs)

    seeds = list(range(6))
    report = rlmesh.evaluate(watching, source, episodes=6, concurrency=1, progress=False, **options)
    make = _spaces_env if source == SPACES else (lambda: gym.make(source))
    want, want_seen = in_process(make, seeds, policy)
    assert [(r["return"], r["length"]) for r in report.episodes] == want  # bit for bit
    assert all(r["error"] is None for r in report.episodes)
    assert len(seen) == len(want_seen) and all(_same(a, b) for a, b in zip(seen, want_seen, strict=True))
    if source == SPACES:
        assert {type(o["word"]) for o in seen} == {str}
        assert len({r["return"] for r in report.episodes}) > 1  # the episodes differ, so a mix-up would show


class Stateful:
    """A language-conditioned policy: told each episode before its first action, and at every step."""

    def __init__(self) -> None:
        self.resets: list[Episode] = []
        self.acted: list[Episode | None] = []

    def reset(self, episode: Episode) -> None:
        self.resets.append(episode)

    def act(self, obs: Any, episode: Episode) -> int:
        assert episode is self.resets[-1]  # one episode at a time, in its sandbox
        self.acted.append(episode)
        return lean(obs)


class StatefulBatch(Stateful):
    def act(self, obs: Any, episodes: list[Episode | None]) -> Any:  # type: ignore[override]
        assert len(episodes) == obs.shape[0] and all(e is None or e in self.resets for e in episodes)
        self.acted.extend(episodes)
        return lean_batch(obs)


def _tasks(report: rlmesh.EvaluationReport) -> list[str]:
    return [t.split(":", 2)[-1] for t in report.tasks]


def test_a_stateful_policy_is_told_each_episode_and_its_task(hub_cache: Path) -> None:  # noqa: F811
    policy = Stateful()
    repo = f"hf://{DESCRIBED}@{DESCRIBED_SHA}"
    report = rlmesh.evaluate(policy, repo, episodes=2, seeds=[7, 8], concurrency=1, trust_remote_code=True,
                             progress=False)
    assert _tasks(report) == list(DESCRIBED_TASKS)
    # reset(episode) exactly once per episode, before its first action, with its seed and task text
    # (an attribute for suite "pick", info["task"] at reset for suite "talk").
    told = [(e.task.split(":", 2)[-1], e.index, e.seed, e.task_description) for e in policy.resets]
    assert sorted(told) == sorted((t, i, s, d) for t, d in DESCRIBED_TASKS.items() for i, s in enumerate([7, 8]))
    assert len(policy.acted) == sum(r["length"] for r in report.episodes)
    assert [r["return"] for r in report.episodes] == [float(x) for x in _cartpole([7, 8]) * 3]
    # Success counted at any step (the default): each env reports it at its 5th step only.
    assert all(r["success"] is True for r in report.episodes)
    suites = report.summary["suites"]
    assert list(suites) == [f"{DESCRIBED}:pick", f"{DESCRIBED}:talk"]
    assert suites[f"{DESCRIBED}:pick"]["episodes"] == 4 and suites[f"{DESCRIBED}:talk"]["episodes"] == 2
    assert suites[f"{DESCRIBED}:pick"]["return_max"] == max(_cartpole([7, 8]))
    assert report.summary["overall"]["success_rate"] == 1.0
    assert report.summary["overall"]["start_seconds"] > 0
    table = report.table()
    assert f"{DESCRIBED}:pick/red" in table and f"suite {DESCRIBED}:talk" in table  # the repository kept


def test_a_batched_stateful_policy_and_success_at_the_last_step(hub_cache: Path) -> None:  # noqa: F811
    policy = StatefulBatch()
    report = rlmesh.evaluate(rlmesh.batched(policy, lanes=2), f"hf://{DESCRIBED}@{DESCRIBED_SHA}:pick/red",
                             episodes=3, concurrency=1, trust_remote_code=True, success="last", progress=False)
    assert sorted((e.index, e.seed, e.task_description) for e in policy.resets) == [
        (i, i, "pick up the red cube") for i in range(3)]  # once per lane's episode
    assert None in policy.acted  # the third episode ran with an idle lane beside it
    assert [r["return"] for r in report.episodes] == [float(x) for x in _cartpole(range(3))]
    assert all(r["success"] is False for r in report.episodes)  # not at the last step
    assert report.summary["overall"]["success_rate"] == 0.0


def _cartpole(seeds: Iterable[int]) -> list[float]:
    results, _ = in_process(lambda: gym.make("CartPole-v1"), seeds, lean)
    return [total for total, _ in results]


def test_a_wrong_action_names_the_policy_the_episode_and_the_space() -> None:
    def left(obs: Any) -> str:
        return "left"

    with pytest.raises(InvalidActionError) as err:
        rlmesh.evaluate(left, "CartPole-v1", episodes=1, progress=False)
    message = str(err.value)
    assert "<locals>.left returned 'left' in episode 0 (seed 0) of CartPole-v1" in message
    assert "Discrete(2)" in message

    with pytest.raises(InvalidActionError, match=r"returned .*shape=\(3,\).* in episodes 0, 1 of CartPole-v1"):
        rlmesh.evaluate(rlmesh.batched(lambda obs: np.zeros(3, dtype=np.int64), lanes=2), "CartPole-v1", episodes=2,
                        concurrency=1, progress=False)


def test_resume_is_refused_for_another_env_and_extends_for_more_episodes(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    rlmesh.evaluate(lean, "CartPole-v1", episodes=4, concurrency=2, results=str(results), progress=False)
    for change, field, shown in [
        ({"env_kwargs": {"max_episode_steps": 50}}, "env_kwargs", "max_episode_steps=50 added"),
        ({"max_episode_steps": 50}, "env_kwargs", "max_episode_steps=50 added"),
        ({"cfg": {"episode_length": 9}}, "env_kwargs", 'cfg={"episode_length":9} added'),
        ({"packages": ["gymnasium==1.1.1"]}, "options", 'packages: [] in the file, ["gymnasium==1.1.1"] now'),
        ({"wrappers": ["gymnasium.wrappers:ClipReward"]}, "options", "wrappers"),
    ]:
        with pytest.raises(ResultsMismatchError) as err:
            rlmesh.evaluate(lean, "CartPole-v1", episodes=4, results=str(results), progress=False, **change)
        assert set(err.value.differences) == {field}, change
        assert shown in str(err.value), str(err.value)
    with pytest.raises(ResultsMismatchError, match="success: \"any\" in the file, \"last\" now"):
        rlmesh.evaluate(lean, "CartPole-v1", episodes=4, results=str(results), success="last", progress=False)
    _, before = read_results(results)

    image = before[0]["image"]
    inspected = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image], capture_output=True,
                               text=True, timeout=60)
    assert inspected.returncode == 0 and inspected.stdout.strip() == image  # each record names its image's id
    assert {r["image"] for r in before} == {image}

    # The same requirements built again can resolve other versions: a record of another image is another run.
    other = tmp_path / "other.jsonl"
    lines = results.read_text().splitlines()
    other.write_text("\n".join([lines[0], *(line.replace(image, "sha256:" + "0" * 64) for line in lines[1:])]) + "\n")
    with pytest.raises(ResultsMismatchError, match="image of CartPole-v1: sha256:0000.* in the file, sha256:") as err:
        rlmesh.evaluate(lean, "CartPole-v1", episodes=6, results=str(other), progress=False)
    assert set(err.value.differences) == {"image"}

    ran: list[dict[str, Any]] = []
    report = rlmesh.evaluate(lean, "CartPole-v1", episodes=6, concurrency=2, results=str(results), progress=ran.append)
    assert sorted(r["episode"] for r in ran) == [4, 5]  # only the missing episodes
    header, records = read_results(results)
    assert header["run"]["seeds"] == list(range(6))
    assert records[:4] == before and sorted(r["episode"] for r in records) == list(range(6))  # each once
    assert [r["return"] for r in report.episodes] == _cartpole(range(6))


def test_the_cli_logs_warnings_only_and_scripts_show_progress_lines(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "rlmesh", "eval", "CartPole-v1", "--policy", "random", "--episodes", "2"]
    quiet = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert "INFO" not in quiet.stderr, quiet.stderr
    assert "evaluate: 2/2 episodes, 0 errors" in quiet.stderr  # stderr is no terminal: plain lines
    loud = subprocess.run([*base, "-v", "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert loud.returncode == 0 and "INFO rlmesh" in loud.stderr and "evaluate: " not in loud.stderr
    # A script with progress=None and logging unconfigured: the same plain lines.
    script = "import rlmesh; rlmesh.evaluate('random', 'CartPole-v1', episodes=2)"
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "evaluate: 2/2 episodes" in run.stderr, run.stderr
    summary = tmp_path / "report.json"
    cfg = subprocess.run([*base, "--cfg", '{"episode_length": 3}', "--json", str(summary)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert cfg.returncode == 0, cfg.stderr  # a Gymnasium id takes cfg as an env kwarg: CartPole refuses it
    assert json.loads(summary.read_text())["summary"]["overall"]["errors"] == 2


def _lifetimes(since: float, until: float) -> list[tuple[float, float]]:
    """(start, die) of this test run's sandbox containers between two times, from the engine's events."""
    out = subprocess.run(
        ["docker", "events", "--since", f"{since:.3f}", "--until", f"{until:.3f}", "--filter", "type=container",
         "--filter", "event=start", "--filter", "event=die", "--filter", "label=rlmesh.sandbox",
         "--filter", f"label=rlmesh.owner={OWNER_LABEL}", "--format", "{{.TimeNano}} {{.Action}} {{.ID}}"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    starts: dict[str, float] = {}
    spans = []
    for line in out.splitlines():
        nanos, action, cid = line.split()
        if action == "start":
            starts[cid] = int(nanos) / 1e9
        elif cid in starts:
            spans.append((starts.pop(cid), int(nanos) / 1e9))
    assert not starts, f"containers started and not ended: {starts}"
    return spans


def _most_alive(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    alive = most = 0
    for _, delta in edges:
        alive += delta
        most = max(most, alive)
    return most


def test_tasks_share_one_pool_of_concurrency_sandboxes(hub_cache: Path) -> None:  # noqa: F811
    since = time.time()
    report = rlmesh.evaluate(lean, f"hf://{DESCRIBED}@{DESCRIBED_SHA}", episodes=1, concurrency=3,
                             trust_remote_code=True, progress=False)
    assert [r["return"] for r in report.episodes] == _cartpole([0]) * 3
    time.sleep(1)  # the engine's last events
    listing, *spans = sorted(_lifetimes(since, time.time()))  # first the sandbox that listed the tasks
    assert len(spans) == 3 and _most_alive(spans) >= 2  # the tasks ran side by side, not one after the other
    since = time.time()
    report = rlmesh.evaluate(lean, f"hf://{DESCRIBED}@{DESCRIBED_SHA}", episodes=3, concurrency=2,
                             trust_remote_code=True, progress=False)
    assert [r["return"] for r in report.episodes] == _cartpole(range(3)) * 3
    time.sleep(1)
    assert _most_alive(_lifetimes(since, time.time())) <= 2  # concurrency bounds the whole run


def test_a_fused_policy_makes_one_call_for_every_waiting_sandbox() -> None:
    calls = {"fused": 0, "unfused": 0}

    def counting(kind: str) -> Callable[[Any], Any]:
        def act(obs: Any) -> Any:
            calls[kind] += 1
            return lean_batch(obs)
        return act

    # Steps of 40 ms (10 ms a lane), so that the four sandboxes step side by side for most of the run.
    kwargs: dict[str, Any] = {"episodes": 64, "concurrency": 4, "packages": [FAULTY_PKG], "step_delay": 0.01,
                              "progress": False}
    unfused = rlmesh.evaluate(rlmesh.batched(counting("unfused"), lanes=4), FAULTY, **kwargs)
    fused = rlmesh.evaluate(rlmesh.batched(counting("fused"), lanes=4, fuse=True), FAULTY, **kwargs)
    assert fused.episodes == [dict(r, seconds=f["seconds"]) for r, f in zip(unfused.episodes, fused.episodes,
                                                                           strict=True)]  # exactly as unfused
    assert [r["return"] for r in fused.episodes] == _cartpole(range(64))
    assert fused.summary["overall"]["policy_calls"] == calls["fused"]
    assert unfused.summary["overall"]["policy_calls"] == calls["unfused"]
    assert calls["fused"] <= calls["unfused"] / 2, calls


def test_a_hanging_sandbox_holds_up_a_fused_call_only_until_its_timeout() -> None:
    started = time.monotonic()
    report = rlmesh.evaluate(rlmesh.batched(lean_batch, lanes=2, fuse=True), FAULTY, episodes=8, concurrency=2,
                             episode_timeout=6, packages=[FAULTY_PKG], hang_seeds=[1], progress=False)
    assert time.monotonic() - started < 300
    by_seed = {r["seed"]: r for r in report.episodes}
    assert by_seed.pop(1)["error"]["type"] == "timeout"
    assert [r["return"] for r in by_seed.values()] == _cartpole(by_seed)
    # The other sandbox's call waited for the hung one until its timeout ended it, then went on
    # (a bound on a hang, not a timing claim): none of its episodes ran into a timeout of its own.
    assert all(r["error"] is None and r["seconds"] < 2 * 6 for r in by_seed.values())


def test_fresh_episode_gives_every_episode_a_new_env() -> None:
    options: dict[str, Any] = {"packages": [str(EVAL_ENVS_PKG)], "progress": False}

    def fresh_env() -> gym.Env[Any, Any]:
        sys.path.insert(0, str(EVAL_ENVS_PKG / "src"))
        try:
            import rlmesh_eval_envs
        finally:
            sys.path.remove(str(EVAL_ENVS_PKG / "src"))
        return rlmesh_eval_envs.make_history()

    def push(obs: Any) -> int:
        return 1

    want = [total for total, _ in in_process(fresh_env, range(4), push)[0]]  # a new env for each episode
    reused = rlmesh.evaluate(push, HISTORY, episodes=4, concurrency=1, **options)
    assert [r["return"] for r in reused.episodes] != want  # reset(seed) alone does not determine this env
    one = rlmesh.evaluate(push, HISTORY, episodes=4, concurrency=1, fresh="episode", **options)
    two = rlmesh.evaluate(push, HISTORY, episodes=4, concurrency=2, fresh="episode", **options)
    assert [r["return"] for r in one.episodes] == [r["return"] for r in two.episodes] == want
    assert one.container_starts == two.container_starts == 4


def test_videos_hold_every_frame_the_env_rendered(tmp_path: Path) -> None:
    import imageio_ffmpeg

    host_gym = gym.__version__
    report = rlmesh.evaluate(lean, "CartPole-v1", episodes=3, concurrency=1, videos=tmp_path, video_episodes=2,
                             packages=[f"gymnasium[classic-control]=={host_gym}"], progress=False)  # pygame renders
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.mp4"))
    assert [str(p) for p in files] == ["CartPole-v1/episode_0_seed_0.mp4", "CartPole-v1/episode_1_seed_1.mp4"]
    assert [r["video"] for r in report.episodes] == [str(tmp_path / f) for f in files] + [None]  # records name them
    for record in report.episodes[:2]:
        env = gym.make("CartPole-v1", render_mode="rgb_array")
        obs, _ = env.reset(seed=record["seed"])
        want = [env.render()]
        done = False
        while not done:
            obs, _, terminated, truncated, _ = env.step(lean(obs))
            want.append(env.render())
            done = terminated or truncated
        env.close()
        decoded = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", record["video"], "-f", "rawvideo", "-pix_fmt",
                                  "rgb24", "-"], capture_output=True, timeout=120, check=True)
        assert "600x400" in decoded.stderr.decode() and f" {env.metadata['render_fps']} fps" in decoded.stderr.decode()
        raw = np.frombuffer(decoded.stdout, dtype=np.uint8)
        got = list(raw.reshape(-1, 400, 600, 3))
        assert len(got) == record["length"] + 1 == len(want)  # the reset's frame, then one per step
        for a, b in zip(got, want, strict=True):
            error = np.abs(a.astype(np.int16) - b.astype(np.int16))
            assert error.mean() < 2.0 and np.percentile(error, 99) < 40  # H.264's tolerance (yuv420p, crf 18)
    # No codec library in this process: a sandbox start (an image build spawns pip from the event
    # loop's thread) still works after videos were written.
    with SandboxEnv("CartPole-v1", imports=["gymnasium"], rebuild=True, progress=False) as env:
        env.reset(seed=0)


def test_video_arguments_are_checked_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(rlmesh.errors.InvalidArgumentError, match="video_episodes= needs videos=DIR"):
        rlmesh.evaluate(lean, "CartPole-v1", episodes=1, video_episodes=2)
    with pytest.raises(rlmesh.errors.InvalidArgumentError, match="renders in rgb_array mode; render_mode='human'"):
        rlmesh.evaluate(lean, "CartPole-v1", episodes=1, videos=tmp_path, render_mode="human")
    with pytest.raises(rlmesh.errors.InvalidArgumentError, match="video_episodes must be a positive int"):
        rlmesh.evaluate(lean, "CartPole-v1", episodes=1, videos=tmp_path, video_episodes=0)
