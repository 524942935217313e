"""Plot throughput against the number of lanes and against shards (PNGs for docs/performance.md).

Usage::

    .venv/bin/pip install matplotlib   # only this script needs it
    .venv/bin/python benchmarks/plot_scaling.py [--out docs/img]

Measures in-process ``SyncVectorEnv``, ``RemoteVectorEnv`` (a host ``rlmesh serve``) and
``SandboxVectorEnv`` for CartPole over N lanes, and the CPU-heavy env (``benchmarks/heavy_env``,
N=16) over 1, 2 and 4 shards, then writes ``throughput_vs_n.png`` and
``throughput_vs_shards.png``. Absolute rates depend on the machine; the curves' shapes are the point.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from _common import Servers, close_all, serve_argv, vector_block

HEAVY_PKG = str(Path(__file__).resolve().parent / "heavy_env")
HEAVY_ID = "rlmesh_bench_heavy:RlmeshBenchHeavy-v0"


def rate(env: Any, n: int, seconds: float = 1.0) -> float:
    import numpy as np

    env.reset(seed=0)
    actions = (np.arange(n) & 1).astype(np.int64)
    return vector_block(env, actions, seconds, 10)[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "img"))
    args = ap.parse_args()
    os.environ.setdefault("RLMESH_PULL_POLICY", "never")
    import gymnasium as gym
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlmesh.numpy import RemoteVectorEnv, SandboxVectorEnv

    lanes = [1, 4, 16, 64, 256]
    curves: dict[str, list[float]] = {"in process (SyncVectorEnv)": [], "RemoteVectorEnv": [], "SandboxVectorEnv": []}
    for n in lanes:
        servers = Servers()  # one per N: wait_ready waits for every server it started
        try:
            local = gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="sync")
            curves["in process (SyncVectorEnv)"].append(rate(local, n))
            local.close()
            sock = servers.start(f"vec{n}", serve_argv(n))
            servers.wait_ready()
            remote = RemoteVectorEnv(f"unix://{sock}")
            curves["RemoteVectorEnv"].append(rate(remote, n))
            remote.close()
            with SandboxVectorEnv("CartPole-v1", num_envs=n) as sandbox:
                curves["SandboxVectorEnv"].append(rate(sandbox, n))
            print(f"N={n}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in curves.items()), flush=True)
        finally:
            servers.close()
    shards = [1, 2, 4]
    heavy: list[float] = []
    cleanup: list[Any] = []
    try:
        for k in shards:
            envs = SandboxVectorEnv(HEAVY_ID, num_envs=16, packages=[HEAVY_PKG], shards=k)
            cleanup.append(envs.close)
            heavy.append(rate(envs, 16, 2.0))
            envs.close()
            print(f"heavy N=16 shards={k}: {heavy[-1]:,.0f}/s", flush=True)
    finally:
        close_all(cleanup)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        ax.plot(lanes, values, marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="lanes (N)", ylabel="env-steps/s", title="CartPole throughput against N")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "throughput_vs_n.png", dpi=120)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([str(k) for k in shards], heavy)
    ax.set(xlabel="shards", ylabel="env-steps/s", title=f"CPU-heavy env, N=16, {os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(out / "throughput_vs_shards.png", dpi=120)
    print(f"wrote {out / 'throughput_vs_n.png'} and {out / 'throughput_vs_shards.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
