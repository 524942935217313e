"""Training runs that outlive their envs (#26): ``restarts=`` replaces a failed shard.

The faulty env (``tests/docker/faulty_pkg``) is CartPole-v1 that exits hard (``os._exit(3)``) on
the 5th step of an episode seeded with one of ``die_seeds``, and hangs on ``hang_seeds``. With
``num_envs=4, shards=2`` and ``reset(seed=0)``, lane 2 (shard 1) is seeded 2: shard 1 dies on the
5th step, and shard 0 (lanes 0 and 1) must go on exactly as an in-process vector env.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from rlmesh.client.restarts import RESTART_SEED_STRIDE
from rlmesh.errors import InvalidArgumentError, RemoteEnvError, SandboxExitedError, SandboxStartError
from rlmesh.numpy import AsyncSandboxVectorEnv, SandboxVectorEnv

FAULTY_PKG = str(Path(__file__).parent / "faulty_pkg")
FAULTY = "rlmesh_faulty:make"
DIES_AT = 5  # the faulty env's FAULT_STEP


def _cartpole(seed: int) -> tuple[gym.Env[Any, Any], Any]:
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)
    return env, obs


def _actions(t: int) -> np.ndarray[Any, Any]:
    return np.array([t % 2, (t + 1) % 2, t % 2, (t + 1) % 2], dtype=np.int64)


def _reference(mode: str) -> gym.vector.SyncVectorEnv:
    ref = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 4, autoreset_mode=gym.vector.AutoresetMode[mode.upper()])
    ref.reset(seed=0)
    return ref


@pytest.mark.parametrize("mode", ["next_step", "same_step"])
def test_a_dead_shard_is_replaced_and_its_lanes_cut_short(mode: str) -> None:
    ref = _reference(mode)
    with SandboxVectorEnv(FAULTY, num_envs=4, shards=2, restarts=2, packages=[FAULTY_PKG], die_seeds=[2],
                          autoreset_mode=mode) as envs:
        obs, _ = envs.reset(seed=0)
        last = obs.copy()
        for t in range(DIES_AT - 1):
            obs, *_ = envs.step(_actions(t))
            want = ref.step(_actions(t))
            np.testing.assert_array_equal(obs, want[0])
            last = obs.copy()
        first_container = envs.container_ids[1]
        obs, rewards, terms, truncs, info = envs.step(_actions(DIES_AT - 1))
        want = ref.step(_actions(DIES_AT - 1))
        # The healthy shard: exactly its own results.
        np.testing.assert_array_equal(obs[:2], want[0][:2])
        np.testing.assert_array_equal(rewards[:2], want[1][:2])
        # The failed shard's lanes: cut short, marked, with the error record.
        assert list(truncs[2:]) == [True, True] and list(terms[2:]) == [False, False] and list(rewards[2:]) == [0, 0]
        assert list(info["_rlmesh_restart"]) == [False, False, True, True]
        record = info["rlmesh_restart"][2]
        assert record["error"]["type"] == "SandboxExitedError" and record["error"]["exit_code"] == 3
        assert "dying on seed 2" in record["error"]["log_tail"] and record["shard"] == 1 and record["restart"] == 1
        assert envs.container_ids[1] != first_container and envs.restart_history == [record]
        restarted = [_cartpole(2 + RESTART_SEED_STRIDE), _cartpole(3 + RESTART_SEED_STRIDE)]
        if mode == "next_step":
            np.testing.assert_array_equal(obs[2:], last[2:])  # the last good observation
            obs, rewards, terms, truncs, info = envs.step(_actions(DIES_AT))  # the autoreset step
            want = ref.step(_actions(DIES_AT))
            np.testing.assert_array_equal(obs[:2], want[0][:2])
            np.testing.assert_array_equal(obs[2:], np.stack([o for _, o in restarted]))  # the documented seeds
            assert list(rewards[2:]) == [0, 0] and not terms[2:].any() and not truncs[2:].any()
            start = DIES_AT + 1
        else:
            np.testing.assert_array_equal(obs[2:], np.stack([o for _, o in restarted]))  # the reset, at once
            assert list(info["_final_obs"][2:]) == [True, True]
            np.testing.assert_array_equal(np.stack(info["final_obs"][2:]), last[2:])
            start = DIES_AT
        for t in range(start, start + 6):  # the restarted lanes go on as the in-process envs seeded so
            obs, *_ = envs.step(_actions(t))
            want = ref.step(_actions(t))
            np.testing.assert_array_equal(obs[:2], want[0][:2])
            for lane, (env, _) in zip((2, 3), restarted, strict=True):
                np.testing.assert_array_equal(obs[lane], env.step(int(_actions(t)[lane]))[0])


def test_a_long_run_with_a_flaky_shard_completes_and_its_healthy_shard_is_untouched() -> None:
    # Lanes 2 and 3 (shard 1) exit at random steps (1 in 60 lane steps), again after each restart
    # (a restart seed stays flaky); shard 0's lanes must be exactly an in-process run's throughout.
    steps = 600
    ref = _reference("next_step")
    with SandboxVectorEnv(FAULTY, num_envs=4, shards=2, restarts=40, packages=[FAULTY_PKG], flaky_seeds=[2, 3],
                          flaky_probability=1 / 60) as envs:
        envs.reset(seed=0)
        restarted_at = []
        pending: list[int] = []
        for t in range(steps):
            obs, rewards, terms, truncs, info = envs.step(_actions(t))
            want = ref.step(_actions(t))
            for got, expected in zip((obs, rewards, terms, truncs), want[:4], strict=True):
                np.testing.assert_array_equal(got[:2], expected[:2])
            if pending:  # the autoreset step after a restart: the reset with the documented seeds
                r = envs.restart_history[-1]["shard_restart"]
                expected = np.stack([_cartpole(lane + RESTART_SEED_STRIDE * r)[1] for lane in (2, 3)])
                np.testing.assert_array_equal(obs[2:], expected)
                pending = []
            if "rlmesh_restart" in info:
                assert list(truncs[2:]) == [True, True] and not terms[2:].any()
                restarted_at.append(t)
                pending = [2, 3]
        assert 3 <= len(restarted_at) == len(envs.restart_history) <= 40, restarted_at
        assert [h["shard"] for h in envs.restart_history] == [1] * len(restarted_at)


def test_disabled_autoreset_leaves_the_reset_to_the_caller() -> None:
    with SandboxVectorEnv(FAULTY, num_envs=4, shards=2, restarts=1, packages=[FAULTY_PKG], die_seeds=[2],
                          autoreset_mode="disabled") as envs:
        obs, _ = envs.reset(seed=0)
        for t in range(DIES_AT - 1):
            obs, *_ = envs.step(_actions(t))
        last = obs.copy()
        obs, _, _, truncs, info = envs.step(_actions(DIES_AT - 1))
        np.testing.assert_array_equal(obs[2:], last[2:])
        assert list(truncs[2:]) == [True, True] and list(info["_rlmesh_restart"]) == [False, False, True, True]
        obs, _ = envs.reset(seed=[None, None, 7, 8], options={"reset_mask": np.array([False, False, True, True])})
        np.testing.assert_array_equal(obs[2:], np.stack([_cartpole(7)[1], _cartpole(8)[1]]))
        envs.step(_actions(0))


def test_past_the_budget_the_failure_raises_with_the_history() -> None:
    # After its restart, lane 2 is seeded 2 + STRIDE, which dies too: the second death is one too many.
    with SandboxVectorEnv(FAULTY, num_envs=4, shards=2, restarts=1, packages=[FAULTY_PKG],
                          die_seeds=[2, 2 + RESTART_SEED_STRIDE]) as envs:
        envs.reset(seed=0)
        with pytest.raises(SandboxExitedError) as info:
            for t in range(3 * DIES_AT):
                envs.step(_actions(t))
        assert t == 2 * DIES_AT  # the first death at step 5, the second 5 steps after the autoreset step
        assert [h["restart"] for h in info.value.restart_history] == [1]  # type: ignore[attr-defined]
        assert any("made all 1 of its restarts" in note for note in info.value.__notes__)


def test_a_restart_that_cannot_start_raises_at_once(tmp_path: Path) -> None:
    # The env refuses to be made while a file in a mounted directory exists: the replacement of the
    # dead shard fails to start, and that is raised at once (one try, not a loop), with the history.
    flag = tmp_path / "flags"
    flag.mkdir()
    flag.chmod(0o755)
    with SandboxVectorEnv(FAULTY, num_envs=4, shards=2, restarts=5, packages=[FAULTY_PKG], die_seeds=[2],
                          refuse_if="/flags/refuse", volumes={str(flag): "/flags:ro"}) as envs:
        envs.reset(seed=0)
        (flag / "refuse").write_text("")
        with pytest.raises(SandboxStartError) as info:
            for t in range(DIES_AT):
                envs.step(_actions(t))
        assert "refusing to make the env" in str(info.value)
        assert [h["restart"] for h in info.value.restart_history] == [1]  # type: ignore[attr-defined]
        assert len(envs.restart_history) == 1
        assert any("the restart of shard 1 failed" in note for note in info.value.__notes__)


def test_an_env_exception_raises_unless_restart_on_names_it() -> None:
    with SandboxVectorEnv(FAULTY, num_envs=4, shards=2, restarts=2, packages=[FAULTY_PKG]) as envs:
        envs.reset(seed=0)
        with pytest.raises(RemoteEnvError):
            envs.step(np.array([0, 0, 0, 5]))  # CartPole asserts its action: the env raised
    with SandboxVectorEnv(FAULTY, num_envs=4, shards=2, restarts=2, restart_on=["exception"],
                          packages=[FAULTY_PKG]) as envs:
        envs.reset(seed=0)
        *_, info = envs.step(np.array([0, 0, 0, 5]))
        assert list(info["_rlmesh_restart"]) == [False, False, True, True]
        assert info["rlmesh_restart"][3]["error"]["type"].startswith("RemoteEnvError")


async def test_a_hung_shard_is_restarted_after_its_request_timeout() -> None:
    async with AsyncSandboxVectorEnv(FAULTY, num_envs=4, shards=2, restarts=1, packages=[FAULTY_PKG],
                                     hang_seeds=[2], request_timeout=3) as envs:
        await envs.reset(seed=0)
        for t in range(DIES_AT - 1):
            await envs.step(_actions(t))
        _, _, _, truncs, info = await envs.step(_actions(DIES_AT - 1))
        assert list(truncs[2:]) == [True, True]
        assert info["rlmesh_restart"][2]["error"]["type"] == "RLMeshTimeoutError"
        obs, *_ = await envs.step(_actions(DIES_AT))
        np.testing.assert_array_equal(obs[2], _cartpole(2 + RESTART_SEED_STRIDE)[1])


async def test_send_recv_returns_a_restarted_shard_in_a_later_recv() -> None:
    # EnvPool-style: whole shards stepped with send(), gathered with recv(); shard 1 dies on its
    # 5th step and comes back cut short, then with its reset, while shard 0 steps as it would.
    ref = _reference("next_step")
    async with AsyncSandboxVectorEnv(FAULTY, num_envs=4, shards=2, restarts=1, packages=[FAULTY_PKG],
                                     die_seeds=[2]) as envs:
        await envs.reset(seed=0)
        seen: list[tuple[int, Any, Any]] = []
        for t in range(DIES_AT + 1):
            await envs.send(_actions(t))
            got: dict[int, Any] = {}
            while len(got) < 4:
                obs, rewards, terms, truncs, info = await envs.recv()
                for k, lane in enumerate(info["env_id"]):
                    got[int(lane)] = (obs[k], truncs[k], info.get("_rlmesh_restart", np.zeros(len(obs), bool))[k])
            want = ref.step(_actions(t))
            np.testing.assert_array_equal(np.stack([got[0][0], got[1][0]]), want[0][:2])
            seen.append((t, got[2][1], got[2][2]))
        assert seen[DIES_AT - 1][1:] == (True, True)  # the step that failed: cut short, marked
        np.testing.assert_array_equal(got[2][0], _cartpole(2 + RESTART_SEED_STRIDE)[1])  # then the reset
        assert len(envs.restart_history) == 1


def test_an_oom_kill_is_restarted_and_its_record_says_memory() -> None:
    with SandboxVectorEnv(FAULTY, num_envs=4, shards=2, restarts=1, packages=[FAULTY_PKG], oom_seeds=[2],
                          memory="96m") as envs:
        envs.reset(seed=0)
        for t in range(DIES_AT):
            *_, info = envs.step(_actions(t))
        record = info["rlmesh_restart"][2]["error"]
        assert record["type"] == "SandboxExitedError" and record["killed_by"] == "memory", record


RESTART_THEN_WAIT = """
import sys
import numpy as np
from rlmesh.numpy import SandboxVectorEnv
envs = SandboxVectorEnv("rlmesh_faulty:make", num_envs=4, shards=2, restarts=1, packages=[sys.argv[1]],
                        die_seeds=[2])
envs.reset(seed=0)
for _ in range(4):
    envs.step(np.zeros(4, dtype=np.int64))
print("R", flush=True)
envs.step(np.zeros(4, dtype=np.int64))  # shard 1 dies: the restart, during which SIGTERM comes
print("restarted", flush=True)
import time
time.sleep(60)
"""


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.4])
def test_sigterm_during_a_restart_leaves_nothing_behind(delay: float) -> None:
    proc = subprocess.Popen([sys.executable, "-c", RESTART_THEN_WAIT, FAULTY_PKG], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "R"
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 20
    while _containers_of(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _containers_of(proc.pid)


def _containers_of(pid: int) -> set[str]:
    out = subprocess.run(["docker", "ps", "-a", "--no-trunc", "--filter", "label=rlmesh.sandbox", "--format",
                          '{{.ID}} {{.Label "rlmesh.owner"}}'], check=True, capture_output=True, text=True).stdout
    rows = [line.split(" ", 1) for line in out.splitlines()]
    return {r[0] for r in rows if len(r) == 2 and r[1].split(":")[2:3] == [str(pid)]}


def test_restart_arguments_are_checked() -> None:
    for bad in (-1, 1.5, "2"):
        with pytest.raises(InvalidArgumentError, match="restarts must be"):
            SandboxVectorEnv("CartPole-v1", num_envs=2, restarts=bad)
    with pytest.raises(InvalidArgumentError, match="restart_on must be"):
        SandboxVectorEnv("CartPole-v1", num_envs=2, restarts=1, restart_on=["crash"])
    with pytest.raises(InvalidArgumentError, match="local shards only"):
        asyncio.run(_ray_restarts())


async def _ray_restarts() -> None:
    AsyncSandboxVectorEnv("CartPole-v1", num_envs=2, restarts=1, placement="ray")
