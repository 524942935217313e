"""The evaluation harness without Docker: arguments, the results file, the report, the CLI's usage errors."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import rlmesh
from rlmesh.cli import main
from rlmesh.errors import (
    ConnectionClosedError,
    DockerUnavailableError,
    InvalidArgumentError,
    RemoteEnvError,
    SandboxExitedError,
    SandboxStartError,
)
from rlmesh.evaluation import EvaluationReport, ResultsMismatchError
from rlmesh.evaluation.api import run_identity
from rlmesh.evaluation.policies import action_fits, load_policy, policy_name, resolve_policy
from rlmesh.evaluation.records import EpisodeTimeout, error_of, is_infrastructure, make_record
from rlmesh.evaluation.results import ResultsFile


def policy(obs: Any) -> int:
    return 0


RUN = run_identity(["CartPole-v1"], [0, 1, 2], "random", "any", {})


def record(task: str, episode: int, ret: float | None, **kw: Any) -> dict[str, Any]:
    return make_record(task, episode, episode, total=ret, length=int(ret or 0), seconds=0.5, attempts=1, **kw)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"episodes": 0}, "episodes must be a positive int"),
    ({"episodes": 3, "seeds": [1, 2]}, "seeds has 2 seed(s) but episodes=3"),
    ({"episodes": 2, "seeds": [1, -1]}, "non-negative int"),
    ({"episodes": 2, "concurrency": 0}, "concurrency must be an int >= 1"),
    ({"episodes": 2, "num_envs": 4}, "num_envs= is chosen by evaluate"),
    ({"episodes": 2, "pakages": ["x"]}, "did you mean packages=?"),
    ({"episodes": 2, "shards": 2}, "use a batched policy"),
])
def test_bad_arguments_are_clear_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        rlmesh.evaluate(policy, "CartPole-v1", **kwargs)
    assert message in str(err.value)


def test_an_unknown_policy_name_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="unknown policy 'randm'"):
        rlmesh.evaluate("randm", "CartPole-v1", episodes=2)
    with pytest.raises(InvalidArgumentError, match="policy must be a callable"):
        rlmesh.evaluate(42, "CartPole-v1", episodes=2)


def test_a_results_file_of_another_run_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    ResultsFile(path, {**RUN, "seeds": [5, 6, 7]}).close()
    with pytest.raises(ResultsMismatchError) as err:
        rlmesh.evaluate("random", "CartPole-v1", episodes=3, results=str(path))
    assert "seeds: the file has 3 (5..7), this run 3 (0..2); episode 0 has seed 5 in the file, 0 now" in str(err.value)
    assert set(err.value.differences) == {"seeds"}
    (tmp_path / "other.txt").write_text("hello\n")
    with pytest.raises(InvalidArgumentError, match="not an rlmesh evaluation results file"):
        rlmesh.evaluate("random", "CartPole-v1", episodes=3, results=str(tmp_path / "other.txt"))


def test_evaluate_refuses_a_running_loop() -> None:
    import asyncio

    async def inside() -> None:
        rlmesh.evaluate("random", "CartPole-v1", episodes=1)

    with pytest.raises(InvalidArgumentError, match="evaluate_async"):
        asyncio.run(inside())


def test_results_file_resumes_and_drops_a_cut_record(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.jsonl"
    store = ResultsFile(path, RUN)
    store.append(record("CartPole-v1", 0, 10.0))
    store.append(record("CartPole-v1", 1, 12.0))
    store.close()
    with path.open("ab") as f:
        f.write(b'{"task": "CartPole-v1", "epis')  # the machine went away mid-write
    again = ResultsFile(path, RUN)
    assert [(r["task"], r["episode"]) for r in again.records] == [("CartPole-v1", 0), ("CartPole-v1", 1)]
    again.append(record("CartPole-v1", 2, 14.0))
    again.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)
    assert json.loads(lines[0]) == {"rlmesh_evaluation": 2, "run": RUN}


def test_a_hand_edited_results_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    ResultsFile(path, RUN).close()
    with path.open("a") as f:
        f.write("not json\n")
    with pytest.raises(InvalidArgumentError, match="line 2, is not an episode record"):
        ResultsFile(path, RUN)


def test_summary_table_and_json() -> None:
    episodes = [record("a", 0, 10.0, success=True), record("a", 1, 20.0, success=False),
                record("b", 0, None, error={"type": "exit", "message": "x", "exit_code": 3, "log_tail": None}),
                record("b", 1, 5.0)]
    report = EvaluationReport(episodes, ["a", "b"], RUN, {"a": (30, 2.0), "b": (5, 1.0)}, 4.0)
    a, b, overall = report.summary["tasks"]["a"], report.summary["tasks"]["b"], report.summary["overall"]
    assert (a["episodes"], a["errors"], a["return_mean"], a["return_std"], a["success_rate"]) == (2, 0, 15.0, 5.0, 0.5)
    assert a["env_steps_per_s"] == 15.0
    assert (b["episodes"], b["errors"], b["return_mean"], b["success_rate"]) == (2, 1, 5.0, None)
    assert (overall["episodes"], overall["errors"], overall["env_steps"]) == (4, 1, 35)
    assert overall["return_mean"] == pytest.approx(35 / 3)
    table = report.table().splitlines()
    assert table[0].split()[:3] == ["TASK", "EPISODES", "ERRORS"] and table[-1].startswith("overall")
    assert "50%" in table[1]
    data = json.loads(report.to_json())
    assert data["episodes"] == report.episodes and data["run"] == RUN


def test_plot_saves_a_png_or_says_matplotlib_is_needed(tmp_path: Path) -> None:
    report = EvaluationReport([record("a", i, float(i)) for i in range(6)], ["a"], RUN)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(InvalidArgumentError, match="pip install matplotlib"):
            report.plot(tmp_path / "p.png")
    else:
        report.plot(tmp_path / "p.png")
        assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_batched_and_policy_names() -> None:
    @rlmesh.batched(lanes=8)
    def act(obs: Any) -> Any:
        return obs

    assert act.lanes == 8 and act(3) == 3
    assert rlmesh.batched(policy).lanes == 16
    assert policy_name(act) == f"batched[8]:{__name__}:test_batched_and_policy_names.<locals>.act"
    assert policy_name(policy) == f"{__name__}:policy"
    acting = resolve_policy(act)
    assert acting.batched and acting.lanes == 8 and not acting.is_async

    async def remote(obs: Any) -> int:
        return 0

    assert resolve_policy(remote).is_async and not resolve_policy(remote).batched
    assert resolve_policy("random").fn is None
    with pytest.raises(InvalidArgumentError, match="lanes must be a positive int"):
        rlmesh.batched(policy, lanes=0)
    assert load_policy("tests.integration.test_evaluate:policy") is policy
    with pytest.raises(InvalidArgumentError, match="has no policy 'nope'"):
        load_policy("tests.integration.test_evaluate:nope")


def test_faults_are_classified() -> None:
    exited = SandboxExitedError("the sandbox container exited", container_id="c" * 64, exit_code=3, logs="a\nb\n")
    assert error_of(exited) == {"type": "exit", "message": "the sandbox container exited", "exit_code": 3,
                                "log_tail": "a\nb"}
    raised = RemoteEnvError("ValueError", "bad seed", "Traceback...\nValueError: bad seed\n")
    assert error_of(raised)["type"] == "exception" and error_of(raised)["message"] == "ValueError: bad seed"
    assert error_of(EpisodeTimeout(2.0))["type"] == "timeout"
    assert error_of(EpisodeTimeout(2.0, logs="started\nhanging\n"))["log_tail"] == "started\nhanging"
    assert error_of(SandboxStartError("did not start", exit_code=1))["type"] == "start"
    assert is_infrastructure(DockerUnavailableError("no engine"))
    assert is_infrastructure(ConnectionClosedError("lost"))
    # A container killed through the engine, or by its engine stopping, is not the env's doing.
    for killer in ("engine", "stopped"):
        assert is_infrastructure(SandboxExitedError("killed", exit_code=137, killed_by=killer))
    oom = SandboxExitedError("killed for lack of memory", exit_code=137, oom_killed=True, killed_by="memory")
    for exc in (exited, oom, raised, SandboxStartError("x"), EpisodeTimeout(1.0)):
        assert not is_infrastructure(exc)


@pytest.mark.parametrize(("argv", "message"), [
    (["--policy", "random"], "give --episodes N"),
    (["--policy", "random", "--episodes", "3", "--seeds", "5:3"], "--seeds must be A:B"),
    (["--policy", "random", "--episodes", "3", "--seeds", "0:2"], "seeds has 2 seed(s) but episodes=3"),
    (["--policy", "no_such_module_here:act", "--episodes", "3"], "cannot import the policy's module"),
    (["--policy", "randm", "--episodes", "3"], "must be 'random' or MODULE:NAME"),
    (["--policy", "random", "--episodes", "0"], "episodes must be a positive int"),
    (["--policy", "random", "--episodes", "2", "--env-kwargs", "[1]"], "--env-kwargs must be a JSON object"),
    (["--policy", "random", "--episodes", "2", "--cfg", "3"], "--cfg must be a JSON object"),
])
def test_cli_usage_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "CartPole-v1", *argv]) == 2
    assert message in capsys.readouterr().err


def test_an_unreachable_engine_is_retried_then_stops_the_run(caplog: pytest.LogCaptureFixture) -> None:
    # The infrastructure's failure (no engine at that address): retried `retries` times, then raised.
    caplog.set_level("WARNING", logger="rlmesh.evaluation")
    with pytest.raises(DockerUnavailableError, match="no Docker engine is reachable"):
        rlmesh.evaluate("random", "CartPole-v1", episodes=2, concurrency=2, retries=1,
                        docker_host="tcp://127.0.0.1:1", progress=False)
    gc.collect()  # a worker's failure left unretrieved would be logged when its task is collected
    assert "retry 1 of 1" in caplog.text and "retry 2" not in caplog.text
    assert "never retrieved" not in caplog.text


def test_cli_says_a_run_could_not_finish_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "r.jsonl"
    code = main(["eval", "CartPole-v1", "--policy", "random", "--episodes", "2", "--retries", "0",
                 "--docker-host", "tcp://127.0.0.1:1", "--results", str(results), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "the run could not finish: no Docker engine is reachable" in err
    assert f"finished episodes are in {results}; run the same command again to resume" in err


def test_more_episodes_extend_a_run_and_a_real_mismatch_is_readable(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    forty = run_identity(["CartPole-v1"], list(range(40)), "random", "any", {})
    store = ResultsFile(path, forty)
    for i in range(40):
        store.append(record("CartPole-v1", i, 10.0))
    store.close()
    fifty = run_identity(["CartPole-v1"], list(range(50)), "random", "any", {})
    again = ResultsFile(path, fifty)  # the file's seeds are a prefix of this run's: it extends
    assert again.extended == 40 and len(again.records) == 40
    again.close()
    assert json.loads(path.read_text().splitlines()[0])["run"]["seeds"] == list(range(50))  # the header rewritten
    assert len(path.read_text().splitlines()) == 41
    other = run_identity(["CartPole-v1"], list(range(1, 51)), "random", "any", {"max_episode_steps": 9})
    with pytest.raises(ResultsMismatchError) as err:
        ResultsFile(path, other)
    message = str(err.value)
    assert "seeds: the file has 50 (0..49), this run 50 (1..50); episode 0 has seed 0 in the file, 1 now" in message
    assert "env_kwargs: max_episode_steps=9 added" in message
    assert "[0,1,2" not in message  # no lists cut mid-way
    with pytest.raises(ResultsMismatchError, match="the file has 50 .* this run 20"):
        ResultsFile(path, run_identity(["CartPole-v1"], list(range(20)), "random", "any", {}))


def test_the_run_identity_covers_what_changes_an_episode() -> None:
    run = run_identity(["CartPole-v1"], [0], "m:p", "last", {"packages": ["gymnasium"], "cfg": {"a": 1},
                                                             "env": {"X": "1"}, "docker_host": "tcp://h:1",
                                                             "connect_timeout": 5})
    assert run["env_kwargs"] == {"cfg": {"a": 1}}
    assert run["options"]["packages"] == ["gymnasium"] and run["options"]["env"] == {"X": "1"}
    assert run["success"] == "last" and run["options"]["autoreset_mode"] == "next_step"
    assert "docker_host" not in run["options"] and "connect_timeout" not in run["options"]  # where, not what
    json.dumps(run)


def test_per_suite_figures_and_labels() -> None:
    sha = "3" * 40
    tasks = [f"hf://o/r@{sha}:pick/red", f"hf://o/r@{sha}:pick/blue", f"hf://o/r@{sha}:talk/hi", "CartPole-v1"]
    episodes = [record(task, i, float(10 * k + i), success=i == 0) for k, task in enumerate(tasks) for i in range(2)]
    report = EvaluationReport(episodes, tasks, RUN, {t: (10, 1.0) for t in tasks}, 10.0,
                              start_seconds={t: 0.5 for t in tasks})
    suites = report.summary["suites"]
    assert list(suites) == ["o/r:pick", "o/r:talk", "CartPole-v1"]
    assert (suites["o/r:pick"]["episodes"], suites["o/r:pick"]["return_max"], suites["o/r:pick"]["success_rate"]) == (
        4, 11.0, 0.5)
    assert suites["o/r:pick"]["start_seconds"] == 1.0 and report.summary["overall"]["start_seconds"] == 2.0
    assert report.summary["overall"]["env_steps_per_s"] == 40 / 10.0  # over the stepping wall the runner measured
    table = report.table()
    assert "o/r:pick/red" in table and "suite o/r:talk" in table and sha not in table
    assert json.loads(report.to_json())["summary"]["suites"] == suites


def test_plot_leaves_matplotlibs_backend_alone(tmp_path: Path) -> None:
    script = (
        "import matplotlib, sys; sys.path.insert(0, '.');"
        "from tests.integration.test_evaluate import RUN, record;"
        "from rlmesh.evaluation import EvaluationReport;"
        "EvaluationReport([record('a', i, float(i)) for i in range(4)], ['a'], RUN).plot(sys.argv[1]);"
        "print(matplotlib.get_backend())"
    )
    import os
    import subprocess
    import sys

    try:
        import matplotlib  # noqa: F401
    except ImportError:  # (the Gymnasium matrix's venvs) the plot says how to get it, as tested above
        with pytest.raises(InvalidArgumentError, match="pip install matplotlib"):
            EvaluationReport([record("a", 0, 1.0)], ["a"], RUN).plot(tmp_path / "p.svg")
        return
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "p.svg")], capture_output=True, text=True,
                         env={**os.environ, "MPLBACKEND": "svg"}, timeout=120, check=True).stdout
    assert out.strip() == "svg"
    assert (tmp_path / "p.svg").read_bytes().lstrip().startswith(b"<?xml")


@pytest.mark.parametrize(("space", "good", "bad"), [
    (gym.spaces.Discrete(2), [0, np.int64(1)], ["left", 2, 0.5, None]),
    (gym.spaces.Box(-1.0, 1.0, (2,), np.float32), [np.zeros(2), [5.0, -5.0], np.zeros(2, np.int64)],
     [np.zeros(3), "ab", np.zeros(2, dtype=np.complex64)]),
    (gym.spaces.Box(0, 9, (1,), np.int64), [np.array([3])], [np.array([0.5])]),
    (gym.spaces.Dict({"a": gym.spaces.Discrete(3), "b": gym.spaces.Text(4)}), [{"a": 1, "b": "xy"}],
     [{"a": 1}, {"a": 1, "b": "xy", "c": 0}, [1, "xy"]]),
    (gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.MultiBinary(2))), [(1, np.array([0, 1], np.int8))],
     [(1,), "ab", (5, np.array([0, 1], np.int8))]),
])
def test_an_action_is_judged_by_its_form(space: Any, good: list[Any], bad: list[Any]) -> None:
    # Bounds of a Box are the env's to judge (Pendulum clips); the form is the policy's to get right.
    assert all(action_fits(space, a) for a in good)
    assert not any(action_fits(space, a) for a in bad)


def test_a_stateful_policy_object_is_resolved() -> None:
    class Described:
        def reset(self, episode: Any) -> None: ...
        def act(self, obs: Any, episode: Any) -> int:
            return 0

    class NotAPolicy:
        act = 3

    acting = resolve_policy(Described())
    assert acting.with_episode and acting.reset is not None and acting.stateful
    assert not resolve_policy(policy).stateful
    assert resolve_policy(rlmesh.batched(Described(), lanes=2)).with_episode
    with pytest.raises(InvalidArgumentError, match="act attribute must be a method"):
        resolve_policy(NotAPolicy())
    with pytest.raises(InvalidArgumentError, match="success must be 'any'"):
        rlmesh.evaluate("random", "CartPole-v1", episodes=1, success="first")


def test_a_resumed_run_with_nothing_left_starts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    store = ResultsFile(path, RUN)
    for i in range(3):
        store.append(record("CartPole-v1", i, 10.0 + i))
    store.close()
    report = rlmesh.evaluate("random", "CartPole-v1", episodes=3, results=str(path), progress=False)
    assert report.container_starts == 0 and [r["return"] for r in report.episodes] == [10.0, 11.0, 12.0]


def test_videos_without_their_encoder_say_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(__import__("sys").modules, "imageio_ffmpeg", None)  # as if not installed
    with pytest.raises(InvalidArgumentError, match=r"pip install 'rlmesh\[video\]'"):
        rlmesh.evaluate("random", "CartPole-v1", episodes=1, videos=tmp_path)
