"""Benchmark the evaluation harness: rlmesh.evaluate against in-process Gymnasium and a container per episode.

Usage::

    .venv/bin/python benchmarks/bench_eval.py [--quick] [--episodes 256] [--rounds 3] [--concurrency 1]

Each round scores the same seeded CartPole episodes with a hand-written policy three ways:

* **in process**: gymnasium ``SyncVectorEnv`` with the same lanes, the same batched policy, and
  each lane reset with its episode's seed (``reset_mask``), as evaluate does in its sandboxes;
* **evaluate**: ``rlmesh.evaluate(batched(policy), "CartPole-v1", episodes=..., concurrency=...)``,
  the container starts included in its time;
* **container per episode**: the hand-written harness the old example was (an ``AsyncSandboxEnv``
  per episode, ``asyncio.gather`` under a semaphore of ``concurrency``), on a subset of the
  episodes (``--baseline-episodes``; every episode lasts 500 steps under this policy, so
  env-steps/s compare).

Then two more comparisons, each in one run:

* **overhead**: a plain policy (one episode per sandbox) through ``rlmesh.evaluate`` at
  ``--plain-concurrency`` against a hand-written loop of that many ``AsyncSandboxEnv``s, each
  reused for its share of the same episodes by ``reset(seed=...)``; the starts are in both times.
* **fused**: a batched policy that sleeps 20 ms per call whatever its batch (a stand-in for a GPU
  forward pass) over 4 sandboxes x 8 lanes, 128 episodes, with and without ``fuse=True``;
  episodes/s over the time stepping (starts excluded, as the summary measures it), and policy calls.

Only ratios measured in the same run are judged (each round's ratio, then the median):
evaluate >= 0.6x the in-process env-steps/s, >= 5x the container-per-episode harness, and
container starts <= concurrency (counted from the engine's events); the plain policy's time
<= 1.1x the hand-written loop's; fused >= 3x unfused episodes/s. Exits 0 whatever the results.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import time
from typing import Any

import gymnasium as gym
import numpy as np
from _common import print_table, run_main, verdict

import rlmesh
from rlmesh.numpy import AsyncSandboxEnv
from rlmesh.sandbox.ownership import owner

os.environ.setdefault("RLMESH_PULL_POLICY", "never")  # a benchmark never reaches a registry

ENV_ID = "CartPole-v1"
LANES = 256
IN_PROCESS_TARGET = 0.6
PER_EPISODE_TARGET = 5.0
OVERHEAD_TARGET = 1.1
FUSED_TARGET = 3.0
FORWARD_SECONDS = 0.02  # the stand-in GPU forward pass


def policy(obs: Any) -> Any:
    """The example's hand-written controller, on a batch: push towards the side the pole leans to."""
    return (obs[:, 2] + 0.5 * obs[:, 3] > 0).astype(np.int64)


def one_policy(obs: Any) -> int:
    return int(obs[2] + 0.5 * obs[3] > 0)


def in_process(seeds: list[int], lanes: int) -> tuple[int, float]:
    """The episodes stepped in process by SyncVectorEnv; returns (env steps, seconds)."""
    started = time.perf_counter()
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(ENV_ID)] * lanes)
    queue = list(reversed(seeds))
    active = [queue.pop() for _ in range(min(lanes, len(queue)))]
    obs, _ = envs.reset(seed=active + [active[0]] * (lanes - len(active)))
    live = np.array([i < len(active) for i in range(lanes)])
    steps = 0
    while live.any():
        obs, _, terminated, truncated, _ = envs.step(policy(obs))
        steps += int(live.sum())
        done = (terminated | truncated) & live
        if done.any():
            reset_seeds: list[int | None] = [None] * lanes
            for i in np.flatnonzero(done):
                if queue:
                    reset_seeds[i] = queue.pop()
                else:
                    live[i] = False
                    reset_seeds[i] = seeds[0]  # an idle lane replays a seed, as evaluate's do
            obs, _ = envs.reset(seed=reset_seeds, options={"reset_mask": terminated | truncated})
    envs.close()
    return steps, time.perf_counter() - started


async def per_episode(seeds: list[int], concurrency: int) -> tuple[int, float]:
    """The old example's harness: a sandbox per episode; returns (env steps, seconds)."""
    limit = asyncio.Semaphore(concurrency)

    async def episode(seed: int) -> int:
        async with limit, AsyncSandboxEnv(ENV_ID) as env:
            obs, _ = await env.reset(seed=seed)
            steps = 0
            while True:
                obs, _, terminated, truncated, _ = await env.step(one_policy(obs))
                steps += 1
                if terminated or truncated:
                    return steps

    started = time.perf_counter()
    steps = await asyncio.gather(*(episode(s) for s in seeds))
    return sum(steps), time.perf_counter() - started


async def hand_loop(seeds: list[int], concurrency: int) -> float:
    """What a user would write without evaluate: ``concurrency`` sandboxes, each reused for its
    share of the episodes; returns the seconds (starts included)."""
    queue = list(reversed(seeds))

    async def worker() -> None:
        async with AsyncSandboxEnv(ENV_ID) as env:
            while queue:
                obs, _ = await env.reset(seed=queue.pop())
                while True:
                    obs, _, terminated, truncated, _ = await env.step(one_policy(obs))
                    if terminated or truncated:
                        break

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


def overhead(episodes: int, concurrency: int, rounds: int) -> tuple[float, float, float]:
    """(median ratio, median evaluate seconds, median hand-written seconds), alternated per round."""
    seeds = list(range(episodes))
    rlmesh.evaluate(one_policy, ENV_ID, episodes=1, concurrency=1, progress=False)  # imports, outside the timing
    ratios, ev, hand = [], [], []
    for r in range(rounds):
        t = time.perf_counter()
        rlmesh.evaluate(one_policy, ENV_ID, episodes=episodes, concurrency=concurrency, progress=False)
        ev.append(time.perf_counter() - t)
        hand.append(asyncio.run(hand_loop(seeds, concurrency)))
        ratios.append(ev[-1] / hand[-1])
        print(f"overhead round {r + 1}/{rounds}: evaluate {ev[-1]:.2f}s, hand-written loop {hand[-1]:.2f}s "
              f"({ratios[-1]:.2f}x)", flush=True)
    return statistics.median(ratios), statistics.median(ev), statistics.median(hand)


def forward(obs: Any) -> Any:
    """A batched policy whose call costs 20 ms whatever the batch, as a GPU forward pass does."""
    time.sleep(FORWARD_SECONDS)
    return (obs[:, 2] > 0.02).astype(np.int64)


def fused_vs_unfused(episodes: int) -> list[tuple[str, float, int]]:
    """(label, episodes/s stepping, policy calls) with and without fuse=True: 4 sandboxes x 8 lanes."""
    out = []
    for fuse in (False, True):
        report = rlmesh.evaluate(rlmesh.batched(forward, lanes=8, fuse=fuse), ENV_ID, episodes=episodes,
                                 concurrency=4, progress=False)
        overall = report.summary["overall"]
        stepping = overall["env_steps"] / overall["env_steps_per_s"]
        out.append(("fused" if fuse else "unfused", episodes / stepping, overall["policy_calls"]))
        print(f"{out[-1][0]}: {out[-1][1]:.1f} episodes/s stepping, {out[-1][2]} policy calls", flush=True)
    return out


def container_starts(since: float, until: float) -> int:
    out = subprocess.run(
        ["docker", "events", "--since", f"{since:.3f}", "--until", f"{until:.3f}", "--filter", "type=container",
         "--filter", "event=start", "--filter", f"label=rlmesh.owner={owner().label}", "--format", "{{.ID}}"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    return len(out.split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 episodes, 1 round, 4 baseline episodes")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per round (default 256)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="sandboxes at once (default 1: on the CI's 2 cores, the host's loop takes one, the sandbox the other)")
    parser.add_argument("--baseline-episodes", type=int, default=None, help="container-per-episode subset (default 12)")
    parser.add_argument("--plain-concurrency", type=int, default=2, help="sandboxes of the overhead comparison (default 2)")
    args = parser.parse_args()
    episodes = args.episodes or (64 if args.quick else 256)
    rounds = args.rounds or (1 if args.quick else 3)
    baseline_n = args.baseline_episodes or (4 if args.quick else 12)
    seeds = list(range(episodes))
    lanes = min(LANES, -(-episodes // args.concurrency))

    asyncio.run(warm_image())

    local, ev, single, starts = [], [], [], []
    for r in range(rounds):
        steps, seconds = in_process(seeds, lanes)
        local.append(steps / seconds)
        since = time.time()
        t = time.perf_counter()
        report = rlmesh.evaluate(rlmesh.batched(policy, lanes=lanes), ENV_ID, episodes=episodes,
                                 concurrency=args.concurrency, progress=False)
        seconds = time.perf_counter() - t
        starts.append(container_starts(since, time.time()))
        ev_steps = sum(e["length"] for e in report.episodes)
        assert ev_steps == steps, f"evaluate stepped {ev_steps} env steps, in process {steps}"
        ev.append(ev_steps / seconds)
        b_steps, b_seconds = asyncio.run(per_episode(seeds[:baseline_n], args.concurrency))
        single.append(b_steps / b_seconds)
        print(f"round {r + 1}/{rounds}: in process {local[-1]:,.0f}, evaluate {ev[-1]:,.0f}, "
              f"container per episode {single[-1]:,.0f} env-steps/s; {starts[-1]} container starts", flush=True)

    m_local, m_ev, m_single = (statistics.median(x) for x in (local, ev, single))
    # Judged per round (the rounds' neighbours share the machine's moment), then the median.
    vs_local = statistics.median(e / loc for e, loc in zip(ev, local, strict=True))
    vs_single = statistics.median(e / one for e, one in zip(ev, single, strict=True))
    print(f"\n{episodes} CartPole episodes, {lanes} lanes x {args.concurrency} sandboxes, median of {rounds} round(s)")
    print_table(["figure", "env-steps/s", "ratio", "target", "verdict"], [
        ["in process (SyncVectorEnv)", f"{m_local:,.0f}", "1.00x", "", ""],
        ["rlmesh.evaluate (starts included)", f"{m_ev:,.0f}", f"{vs_local:.2f}x", f">= {IN_PROCESS_TARGET}x",
         verdict(vs_local >= IN_PROCESS_TARGET)],
        [f"container per episode ({baseline_n} episodes)", f"{m_single:,.0f}", f"{vs_single:.1f}x (evaluate/it)",
         f">= {PER_EPISODE_TARGET}x", verdict(vs_single >= PER_EPISODE_TARGET)],
        ["container starts per evaluate", str(max(starts)), "", f"<= {args.concurrency}",
         verdict(max(starts) <= args.concurrency)],
    ])

    plain_episodes = 8 if args.quick else 16
    ratio, ev_s, hand_s = overhead(plain_episodes, args.plain_concurrency, rounds)
    (_, unfused_rate, unfused_calls), (_, fused_rate, fused_calls) = fused_vs_unfused(32 if args.quick else 128)
    print(f"\nA plain policy, {plain_episodes} episodes over {args.plain_concurrency} sandboxes (starts included); "
          f"a {FORWARD_SECONDS * 1000:.0f} ms forward pass over 4 sandboxes x 8 lanes")
    print_table(["figure", "value", "ratio", "target", "verdict"], [
        ["hand-written AsyncSandboxEnv loop", f"{hand_s:.2f} s", "1.00x", "", ""],
        ["rlmesh.evaluate, plain policy", f"{ev_s:.2f} s", f"{ratio:.2f}x", f"<= {OVERHEAD_TARGET}x",
         verdict(ratio <= OVERHEAD_TARGET)],
        ["batched, unfused", f"{unfused_rate:.1f} episodes/s", f"{unfused_calls} calls", "", ""],
        ["batched, fuse=True", f"{fused_rate:.1f} episodes/s", f"{fused_rate / unfused_rate:.2f}x ({fused_calls} calls)",
         f">= {FUSED_TARGET}x", verdict(fused_rate / unfused_rate >= FUSED_TARGET)],
    ])


async def warm_image() -> None:
    """Build or reuse the CartPole sandbox image before anything is timed."""
    async with AsyncSandboxEnv(ENV_ID):
        pass


if __name__ == "__main__":
    run_main(main)
