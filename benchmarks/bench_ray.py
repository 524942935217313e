"""A shard placed by Ray against the same relay path without Ray.

Usage::

    .venv/bin/python benchmarks/bench_ray.py [--quick]

Starts a local Ray cluster of one node whose every address is 127.0.0.1 (``ray.cluster_utils``,
as the Ray tests do: nothing leaves loopback), then alternates rounds between two sandboxes of 8
CartPole lanes, both reached over TCP through a relay with a token:

* ``SandboxVectorEnv(..., placement="ray")``: a Ray actor started the sandbox and handed back
  the node's address (the relay's published port) and the token;
* ``SandboxVectorEnv(..., transport="tcp")``: the same relay path, started by this process.

The row is the vector step p50 of the Ray-placed shard against the other (target <= 1.1x: Ray
is out of the step path). Needs a Docker engine, a base image and Ray (``rlmesh[ray]``).
Always exits 0.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    Series,
    close_all,
    paired,
    parse_rounds,
    print_table,
    ratio_cols,
    run_main,
    us,
    vector_block,
    verdict,
)

N = 8
TARGET = 1.1


def main(argv: list[str] | None = None) -> int:
    rounds, block = parse_rounds(__doc__, argv, rounds=(3, 7), block=(0.3, 0.6))
    os.environ.setdefault("RLMESH_PULL_POLICY", "never")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every node and address on 127.0.0.1

    import numpy as np
    import ray
    from ray.cluster_utils import Cluster

    from rlmesh.numpy import SandboxVectorEnv

    print(f"rlmesh Ray benchmark: ray {ray.__version__}, {os.cpu_count()} cpus, {rounds} rounds x {block:g} s",
          flush=True)
    cleanup: list[Any] = []
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cleanup.append(cluster.shutdown)
    try:
        assert cluster.address.startswith("127.0.0.1:"), cluster.address
        ray.init(address=cluster.address, log_to_driver=False)
        cleanup.append(ray.shutdown)
        envs = {
            "ray": SandboxVectorEnv("CartPole-v1", num_envs=N, placement="ray"),
            "tcp": SandboxVectorEnv("CartPole-v1", num_envs=N, transport="tcp"),
        }
        cleanup += [e.close for e in envs.values()]
        for e in envs.values():
            e.reset(seed=0)
        actions = (np.arange(N) & 1).astype(np.int64)
        series = {k: Series() for k in envs}
        t0 = time.perf_counter()
        for r in range(rounds):
            for key in (list(envs) if r % 2 == 0 else list(envs)[::-1]):
                samples, _ = vector_block(envs[key], actions, block, 50 if r == 0 else 10)
                series[key].add_latency(samples)
            print(f"  round {r + 1}/{rounds} ({time.perf_counter() - t0:.0f} s)", flush=True)
        ray_addr = envs["ray"]._core.shards[0].address
    finally:
        close_all(cleanup)

    per = paired(series["ray"].per_round, series["tcp"].per_round)
    header = ["figure", "value", "baseline", "ratio", "per-round", "target", "result"]
    rows = [[f"Ray-placed shard (N={N}) vector step p50", us(series["ray"].p50),
             f"relay path without Ray {us(series['tcp'].p50)}", *ratio_cols(per), f"<= {TARGET:g}x",
             verdict(statistics.median(per) <= TARGET)]]
    print()
    print(f"Ray-placed shard reached at {ray_addr}")
    print_table(header, rows)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    run_main(main)
