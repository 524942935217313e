"""Throughput against shards, beside Gymnasium's own vector envs, on however many cores there are.

Usage::

    .venv/bin/python benchmarks/bench_manycore.py [--quick] [--rounds R] [--block-seconds S]
        [--workload pong|heavy|all] [--pong-envs N] [--heavy-envs N] [--shards 1,2,4,8,16]
        [--backend auto|serve|sandbox] [--json PATH] [--plot PATH]

Workloads (issue #17): ALE ``Pong-v5`` at N=32 with random actions, and the CPU-heavy env
(``benchmarks/heavy_env``, 200 us of CPU per lane step) at N=64. Each is run, in interleaved
rounds, as

* Gymnasium ``SyncVectorEnv`` (one process) and ``AsyncVectorEnv`` (a process per lane, shared
  memory for observations), on the same lanes;
* rlmesh over K shards, K in 1, 2, 4, 8, 16 up to the core count: K ``rlmesh serve`` processes on
  Unix sockets (``RemoteVectorEnv``), or, with a Docker engine, ``SandboxVectorEnv(shards=K)``.

It prints env-steps/s and the client's CPU per step (this process's CPU time, all its threads;
Gymnasium's workers and rlmesh's servers are other processes), each the median over rounds, and
each rlmesh row's ratio to ``AsyncVectorEnv`` (median of the per-round ratios). ``--json`` keeps
the figures, ``--plot`` draws throughput against shards (needs matplotlib). Always exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import Servers, close_all, collected, print_table, run_main

HEAVY_PKG = str(Path(__file__).resolve().parent / "heavy_env")
WORKLOADS: dict[str, dict[str, Any]] = {
    "pong": {"id": "ALE/Pong-v5", "imports": ["ale_py"], "packages": ["ale-py"], "n": 32},
    "heavy": {"id": "rlmesh_bench_heavy:RlmeshBenchHeavy-v0", "imports": [], "packages": [HEAVY_PKG], "n": 64},
}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _docker() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _import_for(workload: dict[str, Any]) -> None:
    for module in workload["imports"]:
        __import__(module)
    if workload["id"].startswith("rlmesh_bench_heavy"):
        sys.path.insert(0, str(Path(HEAVY_PKG) / "src"))
        __import__("rlmesh_bench_heavy")
    if workload["id"].startswith("ALE/"):
        import ale_py
        import gymnasium as gym

        gym.register_envs(ale_py)


def _gym_factory(workload: dict[str, Any]) -> Callable[[], Any]:
    import gymnasium as gym

    env_id = workload["id"]

    def make() -> Any:
        _import_for(workload)
        return gym.make(env_id)

    return make


def _serve_shards(servers: Servers, workload: dict[str, Any], n: int, k: int) -> list[str]:
    from rlmesh.client.lanes import split_lanes

    env = dict(os.environ)
    if workload["id"].startswith("rlmesh_bench_heavy"):
        env["PYTHONPATH"] = os.pathsep.join([str(Path(HEAVY_PKG) / "src"), env.get("PYTHONPATH", "")])
        os.environ["PYTHONPATH"] = env["PYTHONPATH"]
    sockets = []
    for j, lanes in enumerate(split_lanes(n, k)):
        argv = [sys.executable, "-m", "rlmesh.serve", workload["id"], "--address", "unix://{sock}",
                "--log-level", "WARNING", "--num-envs", str(lanes), "--vectorization-mode", "sync"]
        for module in workload["imports"]:
            argv += ["--import", module]
        sockets.append(servers.start(f"k{k}-{j}", argv))
    return sockets


def _contestants(workload: dict[str, Any], n: int, shards: list[int], backend: str,
                 cleanup: list[Callable[[], Any]]) -> list[tuple[str, Any]]:
    import gymnasium as gym

    out: list[tuple[str, Any]] = []
    sync = gym.vector.SyncVectorEnv([_gym_factory(workload) for _ in range(n)])
    cleanup.append(sync.close)
    out.append(("gymnasium Sync", sync))
    asyn = gym.vector.AsyncVectorEnv([_gym_factory(workload) for _ in range(n)], shared_memory=True)
    cleanup.append(asyn.close)
    out.append(("gymnasium Async", asyn))
    if backend == "sandbox":
        from rlmesh.numpy import SandboxVectorEnv

        for k in shards:
            env = SandboxVectorEnv(workload["id"], num_envs=n, shards=k, packages=workload["packages"],
                                   imports=workload["imports"])
            cleanup.append(env.close)
            out.append((f"rlmesh K={k}", env))
        return out
    from rlmesh import RemoteVectorEnv

    servers = Servers()
    cleanup.append(servers.close)
    addresses = {k: _serve_shards(servers, workload, n, k) for k in shards}
    servers.wait_ready()
    for k in shards:
        env = RemoteVectorEnv([f"unix://{s}" for s in addresses[k]] if k > 1 else f"unix://{addresses[k][0]}")
        cleanup.append(env.close)
        out.append((f"rlmesh K={k}", env))
    return out


def _block(env: Any, batches: list[Any], seconds: float, warmup: int) -> tuple[float, float]:
    """Step for ``seconds``: env-steps/s and this process's CPU seconds per step."""
    n = len(batches[0])
    for i in range(warmup):
        env.step(batches[i % len(batches)])
    with collected():
        steps = 0
        cpu0, t0 = time.process_time(), time.perf_counter()
        end = t0 + seconds
        while True:
            env.step(batches[steps % len(batches)])
            steps += 1
            now = time.perf_counter()
            if now >= end:
                break
        cpu = time.process_time() - cpu0
    return n * steps / (now - t0), cpu / steps


def run_workload(name: str, n: int, shards: list[int], backend: str, rounds: int, seconds: float) -> dict[str, Any]:
    """Every contestant of one workload, in ``rounds`` interleaved rounds."""
    workload = WORKLOADS[name]
    _import_for(workload)
    cleanup: list[Callable[[], Any]] = []
    try:
        contestants = _contestants(workload, n, shards, backend, cleanup)
        first = contestants[0][1]
        space = first.action_space
        space.seed(0)
        batches = [space.sample() for _ in range(64)]
        for _, env in contestants:
            env.reset(seed=0)
        rates: dict[str, list[float]] = {label: [] for label, _ in contestants}
        cpus: dict[str, list[float]] = {label: [] for label, _ in contestants}
        for r in range(rounds):
            for label, env in contestants:
                rate, cpu = _block(env, batches, seconds, warmup=5)
                rates[label].append(rate)
                cpus[label].append(cpu)
            print(f"  {name} round {r + 1}/{rounds}: " + ", ".join(
                f"{label} {rates[label][-1]:,.0f}/s" for label, _ in contestants), flush=True)
    finally:
        close_all(cleanup)
    base = rates["gymnasium Async"]
    rows = {}
    for label in rates:
        ratios = [a / b for a, b in zip(rates[label], base, strict=True)]
        rows[label] = {"steps_per_s": statistics.median(rates[label]), "cpu_per_step_s": statistics.median(cpus[label]),
                       "vs_async": statistics.median(ratios), "per_round": rates[label]}
    return {"workload": name, "env": workload["id"], "num_envs": n, "backend": backend, "rows": rows}


def print_result(result: dict[str, Any]) -> None:
    """One table per workload."""
    print(f"\n{result['env']}, N={result['num_envs']} ({result['backend']}):")
    table = []
    k1 = result["rows"].get("rlmesh K=1", {}).get("steps_per_s")
    for label, row in result["rows"].items():
        vs_k1 = f"{row['steps_per_s'] / k1:.2f}x" if k1 and label.startswith("rlmesh") else ""
        table.append([label, f"{row['steps_per_s']:,.0f}", f"{row['cpu_per_step_s'] * 1e3:.2f} ms",
                      f"{row['vs_async']:.2f}x", vs_k1])
    print_table(["", "env-steps/s", "client CPU/step", "vs Async", "vs K=1"], table)


def plot(results: list[dict[str, Any]], path: str) -> None:
    """Throughput against shards, each workload beside its Gymnasium baselines."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        rows = result["rows"]
        ks = sorted(int(label.split("=")[1]) for label in rows if label.startswith("rlmesh"))
        ax.plot(ks, [rows[f"rlmesh K={k}"]["steps_per_s"] for k in ks], "o-", label=f"rlmesh ({result['backend']})")
        for label, style in (("gymnasium Async", "--"), ("gymnasium Sync", ":")):
            ax.axhline(rows[label]["steps_per_s"], linestyle=style, color="gray" if "Sync" in label else "black",
                       label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("shards K")
        ax.set_ylabel("env-steps/s")
        ax.set_ylim(bottom=0)
        name = "heavy env (200 us CPU a step)" if result["workload"] == "heavy" else result["env"]
        ax.set_title(f"{name}, N={result['num_envs']}, {_cores()} cores")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--block-seconds", type=float)
    ap.add_argument("--workload", choices=("pong", "heavy", "all"), default="all")
    ap.add_argument("--pong-envs", type=int, default=WORKLOADS["pong"]["n"])
    ap.add_argument("--heavy-envs", type=int, default=WORKLOADS["heavy"]["n"])
    ap.add_argument("--shards", default="1,2,4,8,16", help="shard counts, capped at the core count")
    ap.add_argument("--backend", choices=("auto", "serve", "sandbox"), default="auto")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--plot", help="draw throughput against shards here (PNG)")
    args = ap.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 3)
    seconds = args.block_seconds or (1.0 if args.quick else 3.0)
    cores = _cores()
    shards = [k for k in (int(s) for s in args.shards.split(",")) if k <= cores] or [1]
    backend = args.backend
    if backend == "auto":
        backend = "sandbox" if _docker() else "serve"
    os.environ.setdefault("RLMESH_PULL_POLICY", "never")
    print(f"rlmesh many-core benchmark: {cores} cores, shards {shards}, backend {backend}, "
          f"{rounds} rounds x {seconds:g} s per figure", flush=True)
    names = ["pong", "heavy"] if args.workload == "all" else [args.workload]
    sizes = {"pong": args.pong_envs, "heavy": args.heavy_envs}
    results = []
    for name in names:
        try:
            results.append(run_workload(name, sizes[name], shards, backend, rounds, seconds))
        except Exception as exc:  # a benchmark reports and goes on
            print(f"{name}: could not run: {type(exc).__name__}: {exc}")
    for result in results:
        print_result(result)
    if args.json:
        Path(args.json).write_text(json.dumps({"cores": cores, "results": results}, indent=1))
    if args.plot and results:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    run_main(main)
