"""Scale-out on one machine: sharded sandboxes, and many sandboxes started at once.

Usage::

    .venv/bin/python benchmarks/bench_scale.py [--quick]

Rows (ratios within each round, median over rounds; see benchmarks/README.md):

* a CPU-heavy synthetic env (``benchmarks/heavy_env``, 200 us of CPU time per step), N=16:
  ``shards=2`` against ``shards=1`` (target >= 1.7x on 2 cores);
* CartPole N=64: ``shards=2`` against ``shards=1`` (target >= 0.9x: sharding must cost little
  where it cannot help);
* CartPole's native vector env (``vectorization_mode="vector"``), N=1024, through a sandbox
  against the same vector env in process (target >= 0.6x);
* 32 ``AsyncSandboxEnv`` started at once to their first reset (target <= 4 s on 2 cores; an
  absolute time, so it depends on the machine), split into where the time goes.

Needs a Docker engine and a base image (``scripts/dev setup``). Always exits 0.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import Series, close_all, paired, parse_rounds, print_table, ratio_cols, run_main, vector_block, verdict

HEAVY_PKG = str(Path(__file__).resolve().parent / "heavy_env")
HEAVY_ID = "rlmesh_bench_heavy:RlmeshBenchHeavy-v0"
SHARD_TARGET_HEAVY = 1.7
SHARD_TARGET_LIGHT = 0.9
CONCURRENT = 32
CONCURRENT_TARGET_S = 4.0
NATIVE_N = 1024
NATIVE_TARGET = 0.6  # a sandbox's native vector env >= 0.6x the same vector env in process


async def concurrent_starts(n: int) -> tuple[float, float]:
    from rlmesh.numpy import AsyncSandboxEnv

    envs = [AsyncSandboxEnv("CartPole-v1") for _ in range(n)]
    t0 = time.perf_counter()
    try:
        async def one(env: Any) -> None:
            await env.start()
            await env.reset(seed=0)

        await asyncio.gather(*(one(e) for e in envs))
        wall = time.perf_counter() - t0
    finally:
        t1 = time.perf_counter()
        await asyncio.gather(*(e.close() for e in envs), return_exceptions=True)
    return wall, time.perf_counter() - t1


def main(argv: list[str] | None = None) -> int:
    rounds, block = parse_rounds(__doc__, argv, rounds=(3, 7), block=(0.5, 1.0))
    os.environ.setdefault("RLMESH_PULL_POLICY", "never")

    import numpy as np

    from rlmesh.numpy import SandboxVectorEnv

    print(f"rlmesh scale benchmark: {os.cpu_count()} cpus, {rounds} rounds x {block:g} s per figure", flush=True)
    cleanup: list[Any] = []
    try:
        envs = {
            ("heavy", 1): SandboxVectorEnv(HEAVY_ID, num_envs=16, packages=[HEAVY_PKG], shards=1),
            ("heavy", 2): SandboxVectorEnv(HEAVY_ID, num_envs=16, packages=[HEAVY_PKG], shards=2),
            ("light", 1): SandboxVectorEnv("CartPole-v1", num_envs=64, shards=1),
            ("light", 2): SandboxVectorEnv("CartPole-v1", num_envs=64, shards=2),
            ("native", 1): SandboxVectorEnv("CartPole-v1", num_envs=NATIVE_N, vectorization_mode="vector"),
        }
        import gymnasium as gym

        native_local = gym.make_vec("CartPole-v1", num_envs=NATIVE_N, vectorization_mode="vector_entry_point")
        cleanup.append(native_local.close)
        native_local.reset(seed=0)
        cleanup += [e.close for e in envs.values()]
        for e in envs.values():
            e.reset(seed=0)
        actions = {"heavy": np.ones(16, np.int64), "light": (np.arange(64) & 1).astype(np.int64),
                   "native": (np.arange(NATIVE_N) & 1).astype(np.int64)}
        series = {key: Series() for key in envs}
        many, many_close = Series(), Series()
        native_in_process = Series()
        t_start = time.perf_counter()
        for r in range(rounds):
            order = list(envs) if r % 2 == 0 else list(envs)[::-1]
            for key in order:
                _, rate = vector_block(envs[key], actions[key[0]], block, 20 if r == 0 else 5)
                series[key].per_round.append(rate)
            _, rate = vector_block(native_local, actions["native"], block, 20 if r == 0 else 5)
            native_in_process.per_round.append(rate)
            print(f"  round {r + 1}/{rounds} ({time.perf_counter() - t_start:.0f} s)", flush=True)
        # The 32 starts have no baseline to share a round with, and the engine goes on tearing
        # their containers down for a while after close(): timed apart, after the step figures,
        # so that their teardown does not land in another figure's block.
        for r in range(rounds):
            wall, close_wall = asyncio.run(concurrent_starts(CONCURRENT))
            many.add_latency([wall])
            many_close.add_latency([close_wall])
            print(f"  {CONCURRENT} starts, round {r + 1}/{rounds} ({time.perf_counter() - t_start:.0f} s)", flush=True)
    finally:
        close_all(cleanup)

    header = ["figure", "value", "baseline", "ratio", "per-round", "target", "result"]
    rows = []
    for kind, n, target in (("heavy", 16, SHARD_TARGET_HEAVY), ("light", 64, SHARD_TARGET_LIGHT)):
        two, one = series[(kind, 2)], series[(kind, 1)]
        per = paired(two.per_round, one.per_round)
        name = "CPU-heavy env (200 us/step)" if kind == "heavy" else "CartPole"
        rows.append([f"{name} N={n}, shards=2 env-steps/s", f"{statistics.median(two.per_round):,.0f}/s",
                     f"shards=1 {statistics.median(one.per_round):,.0f}/s", *ratio_cols(per),
                     f">= {target:g}x", verdict(statistics.median(per) >= target)])
    nper = paired(series[("native", 1)].per_round, native_in_process.per_round)
    rows.append([f"CartPole N={NATIVE_N} native vector mode, sandbox env-steps/s",
                 f"{statistics.median(series[('native', 1)].per_round):,.0f}/s",
                 f"in process {statistics.median(native_in_process.per_round):,.0f}/s", *ratio_cols(nper),
                 f">= {NATIVE_TARGET:g}x", verdict(statistics.median(nper) >= NATIVE_TARGET)])
    rows.append([f"{CONCURRENT} AsyncSandboxEnv started at once, wall to all reset p50", f"{many.p50:.2f} s", "", "",
                 "", f"<= {CONCURRENT_TARGET_S:g} s", verdict(many.p50 <= CONCURRENT_TARGET_S)])
    rows.append([f"  close() of all {CONCURRENT} p50", f"{many_close.p50:.2f} s", "", "", "", "info", ""])
    print()
    print_table(header, rows)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    run_main(main)
