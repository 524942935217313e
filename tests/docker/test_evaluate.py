"""The evaluation harness against real Docker: the pool, faults, the CLI interrupted and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import rlmesh

from .conftest import OWNER_LABEL, ROOT
from .test_hf import (
    REPO,
    SHA,
    hub_cache,  # noqa: F401  (the fixture)
)

FAULTY_PKG = str(Path(__file__).parent / "faulty_pkg")
FAULTY = "rlmesh_faulty:make"


def lean(obs: Any) -> int:
    """A deterministic CartPole policy whose episodes have different lengths for different seeds."""
    return int(obs[2] > 0.02)


def lean_batch(obs: Any) -> Any:
    return (obs[:, 2] > 0.02).astype(np.int64)


def in_process(seeds: Sequence[int], policy: Callable[[Any], Any] | None = None) -> list[float]:
    """Returns of the same episodes stepped in process by Gymnasium (``policy`` None: seeded random actions)."""
    out = []
    for seed in seeds:
        env = gym.make("CartPole-v1")
        obs, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        total, done = 0.0, False
        while not done:
            action = env.action_space.sample() if policy is None else policy(obs)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        env.close()
        out.append(total)
    return out


def container_starts(since: float, until: float, owner: str = OWNER_LABEL) -> int:
    """Sandbox containers started by ``owner`` between two times, counted from the engine's events."""
    out = subprocess.run(
        ["docker", "events", "--since", f"{since:.3f}", "--until", f"{until:.3f}", "--filter", "type=container",
         "--filter", "event=start", "--filter", "label=rlmesh.sandbox", "--filter", f"label=rlmesh.owner={owner}",
         "--format", "{{.ID}}"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    return len(out.split())


def read_results(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines = path.read_text().splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


@pytest.mark.parametrize("kind", ["plain", "batched"])
def test_pool_parity_and_container_starts(kind: str, tmp_path: Path) -> None:
    seeds = list(range(100, 112))
    policy: Any = lean if kind == "plain" else rlmesh.batched(lean_batch, lanes=4)
    seen: list[dict[str, Any]] = []
    sigint = signal.getsignal(signal.SIGINT)
    since = time.time()
    report = rlmesh.evaluate(policy, "CartPole-v1", episodes=12, seeds=seeds, concurrency=3,
                             results=str(tmp_path / "results.jsonl"), progress=seen.append)
    starts = container_starts(since, time.time())
    assert signal.getsignal(signal.SIGINT) is sigint  # the run's handler is gone
    assert starts <= 3, f"{starts} containers started for 12 episodes at concurrency 3"
    assert report.container_starts <= 3
    want = in_process(seeds, lean)
    assert len(set(want)) > 3  # the episodes differ, so a mix-up would show
    assert [r["return"] for r in report.episodes] == want  # bit for bit
    assert [r["seed"] for r in report.episodes] == seeds
    assert all(r["error"] is None and r["attempts"] == 1 for r in report.episodes)
    assert [r["length"] for r in report.episodes] == [int(x) for x in want]
    assert sorted(r["episode"] for r in seen) == list(range(12))
    header, records = read_results(tmp_path / "results.jsonl")
    assert header["run"]["seeds"] == seeds
    assert sorted((r["task"], r["episode"]) for r in records) == [("CartPole-v1", i) for i in range(12)]
    assert set(records[0]) == set(report.episodes[0])
    overall = report.summary["overall"]
    assert overall["episodes"] == 12 and overall["errors"] == 0
    assert overall["return_mean"] == pytest.approx(float(np.mean(want)))
    assert json.loads(report.to_json())["summary"] == report.summary


@pytest.mark.parametrize("kind", ["plain", "batched"])
def test_faults_are_recorded_and_the_run_goes_on(kind: str) -> None:
    # Seed 2 makes the env exit hard (exit code 3), seed 5 makes it hang; the others are CartPole.
    policy: Any = lean if kind == "plain" else rlmesh.batched(lean_batch, lanes=4)
    started = time.monotonic()
    report = rlmesh.evaluate(policy, FAULTY, episodes=8, concurrency=2, episode_timeout=4, packages=[FAULTY_PKG],
                             die_seeds=[2], hang_seeds=[5], progress=False)
    assert time.monotonic() - started < 300  # a hang is bounded by episode_timeout
    by_seed = {r["seed"]: r for r in report.episodes}
    died, hung = by_seed.pop(2), by_seed.pop(5)
    assert died["error"]["type"] == "exit" and died["error"]["exit_code"] == 3, died
    assert "dying on seed 2" in died["error"]["log_tail"]
    assert died["return"] is None
    assert hung["error"]["type"] == "timeout", hung
    assert "episode_timeout=4" in hung["error"]["message"]
    assert "hanging on seed 5" in hung["error"]["log_tail"]  # what the env said before it hung
    want = in_process(list(by_seed), lean)
    assert [r["return"] for r in by_seed.values()] == want
    assert all(r["error"] is None for r in by_seed.values())
    assert report.summary["overall"]["errors"] == 2
    # Plain: one episode per sandbox, so each fault is its episode's. Batched (4 lanes, seeds 0-3 and
    # 4-7 in two sandboxes): nobody can tell which lane failed, so each lane's episode ran again alone.
    assert {r["attempts"] for r in report.episodes} == ({1} if kind == "plain" else {2})


def test_every_task_of_an_envhub_repository(hub_cache: Path, capfd: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    # hf://owner/repo without a selector: every suite/task its make_env returns, each with its own pool.
    report = rlmesh.evaluate(lean, f"hf://{REPO}", episodes=3, concurrency=1, trust_remote_code=True,
                             allow_unpinned_hf=True)
    assert report.tasks == [f"hf://{REPO}@{SHA}:{t}" for t in ("cartpole_suite/0", "cartpole_suite/1", "other_suite/a")]
    assert list(report.summary["tasks"]) == report.tasks
    want = in_process(range(3), lean)
    for task in report.tasks:
        assert [r["return"] for r in report.episodes if r["task"] == task] == want, task
    assert report.summary["overall"]["episodes"] == 9 and report.summary["overall"]["errors"] == 0
    assert report.container_starts == 3  # one sandbox per task at concurrency 1, reused for its 3 episodes
    assert "evaluate: 9/9 episodes, 0 errors, mean return" in capfd.readouterr().err  # no terminal: plain lines


def test_shards_under_evaluate_with_a_progress_bar(capfd: pytest.CaptureFixture[str]) -> None:
    # Each pool sandbox is a vector env sharded over two containers; the pool is the same.
    since = time.time()
    report = rlmesh.evaluate(rlmesh.batched(lean_batch, lanes=4), "CartPole-v1", episodes=8, concurrency=1, shards=2,
                             progress=True)
    assert container_starts(since, time.time()) == 2  # one pool sandbox of two shards, reused for 8 episodes
    assert [r["return"] for r in report.episodes] == in_process(range(8), lean)
    err = capfd.readouterr().err
    assert "evaluate" in err and "8/8" in err and "mean_return" in err  # tqdm's bar, with the running figures


def test_ray_placement_under_evaluate(ray_cluster: str) -> None:
    import ray

    from rlmesh.sandbox.placement import RayPlacement

    ray.init(address=ray_cluster, log_to_driver=False)
    try:
        report = rlmesh.evaluate(rlmesh.batched(lean_batch, lanes=4), "CartPole-v1", episodes=8, concurrency=1,
                                 shards=2, placement=RayPlacement(num_cpus=1, address=ray_cluster), progress=False)
    finally:
        ray.shutdown()
    assert [r["return"] for r in report.episodes] == in_process(range(8), lean)
    assert report.container_starts == 1 and report.summary["overall"]["errors"] == 0


def test_a_remote_engine_under_evaluate(second_engine: str) -> None:
    # docker_host=: the pool's sandboxes run on another engine, reached through relays; same pool.
    since = time.time()
    report = rlmesh.evaluate(lean, "CartPole-v1", episodes=6, concurrency=2, docker_host=second_engine,
                             progress=False)
    until = time.time()
    assert [r["return"] for r in report.episodes] == in_process(range(6), lean)
    assert report.container_starts == 2
    starts = subprocess.run(
        ["docker", "-H", second_engine, "events", "--since", f"{since:.3f}", "--until", f"{until:.3f}", "--filter",
         "event=start", "--filter", "label=rlmesh.sandbox", "--filter", f"label=rlmesh.owner={OWNER_LABEL}",
         "--format", "{{.ID}}"], check=True, capture_output=True, text=True, timeout=60).stdout.split()
    assert len(starts) <= 4  # two sandboxes, each with its relay
    left = subprocess.run(["docker", "-H", second_engine, "ps", "-aq", "--filter", "label=rlmesh.sandbox"],
                          check=True, capture_output=True, text=True).stdout.split()
    assert left == []


def _eval_cli(results: Path, episodes: int) -> list[str]:
    return [sys.executable, "-m", "rlmesh", "eval", FAULTY, "--package", FAULTY_PKG, "--policy", "random",
            "--episodes", str(episodes), "--concurrency", "2", "--results", str(results),
            "--env-kwargs", '{"step_delay": 0.02}', "--no-progress"]


def _live_sandboxes_of(pid: int) -> list[str]:
    out = subprocess.run(["docker", "ps", "-a", "--filter", "label=rlmesh.sandbox", "--format",
                          '{{.ID}} {{.Label "rlmesh.owner"}}'], check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if f":{pid}:" in line]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_interrupted_then_resumed(sig: signal.Signals, tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    episodes = 16
    proc = subprocess.Popen(_eval_cli(results, episodes), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and len(results.read_text().splitlines()) >= 1 + 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be interrupted:\n" + (proc.stdout.read() if proc.stdout else "")
        proc.send_signal(sig)
        sent = time.monotonic()
        output, _ = proc.communicate(timeout=60)
        stopped_in = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert stopped_in < 30, f"stopping took {stopped_in:.1f}s"  # a bound on a hang, not a timing claim
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGTERM), output
    assert _live_sandboxes_of(proc.pid) == []
    _, first = read_results(results)
    assert 3 <= len(first) < episodes, output
    if sig == signal.SIGINT:
        assert "interrupted" in output and "run the same command again" in output

    again = subprocess.run([*_eval_cli(results, episodes), "--json", str(tmp_path / "report.json")], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "overall" in again.stdout
    summary = json.loads((tmp_path / "report.json").read_text())["summary"]
    assert summary["overall"]["episodes"] == episodes and summary["overall"]["errors"] == 0
    _, records = read_results(results)
    keys = [(r["task"], r["episode"]) for r in records]
    assert sorted(keys) == [(FAULTY, i) for i in range(episodes)]  # each episode exactly once
    assert records[: len(first)] == first  # the first run's records stand
    by_episode = sorted(records, key=lambda r: r["episode"])
    assert [r["return"] for r in by_episode] == in_process(range(episodes))


def test_cli_refuses_results_of_another_run(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps({"rlmesh_evaluation": 1, "run": {"sources": ["CartPole-v1"], "seeds": [0, 1],
                                                                   "policy": "random"}}) + "\n")
    run = subprocess.run([sys.executable, "-m", "rlmesh", "eval", "CartPole-v1", "--policy", "random", "--episodes", "3",
                          "--results", str(results)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "holds results of another run" in run.stderr and "seeds" in run.stderr
    assert os.path.getsize(results) > 0 and len(results.read_text().splitlines()) == 1


def test_cli_records_an_env_that_cannot_be_made_and_exits_0(tmp_path: Path) -> None:
    # Every episode gets a record, errors included: exit 0. Three failed starts in a row, then the
    # task's other episodes are recorded unrun.
    results = tmp_path / "results.jsonl"
    run = subprocess.run([sys.executable, "-m", "rlmesh", "eval", "CartPol-v1", "--policy", "random", "--episodes", "5",
                          "--concurrency", "1", "--results", str(results), "--no-progress"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "5 episode(s) recorded as errors; the first: episode 0 of CartPol-v1: start:" in run.stdout
    assert "Did you mean" in run.stdout and f"every record is in {results}" in run.stdout
    _, records = read_results(results)
    assert [r["episode"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["error"]["type"] for r in records] == ["start"] * 5
    assert all(r["error"]["exit_code"] is not None and "CartPol" in r["error"]["log_tail"] for r in records[:3])
    assert all(r["error"]["message"].startswith("not run: the sandbox failed to start 3 times in a row")
               for r in records[3:])
