"""What a shard restart costs (``restarts=``): from the failure to the restarted lanes' next step.

In each round, a ``SandboxVectorEnv`` of 4 lanes over 2 shards runs the faulty CartPole of the
tests (``tests/docker/faulty_pkg``), whose shard 1 exits hard on the 5th step. Timed, in the same
round: a vector sandbox's start (the same image; the baseline a restart is judged against), the
step that fails (the failure seen, the container removed, a new one started and reset), the
autoreset step after it, and a plain step for scale. Only the ratio to the start is judged.

Usage: ``.venv/bin/python benchmarks/bench_restart.py [--rounds N]`` (about 10 s a round).
Needs Docker and the test wheelhouse's packages (``scripts/dev bench`` sets pip offline).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RLMESH_PULL_POLICY", "never")

from rlmesh.numpy import SandboxVectorEnv

FAULTY_PKG = str(Path(__file__).resolve().parents[1] / "tests" / "docker" / "faulty_pkg")
DIES_AT = 5


def one_round() -> dict[str, float]:
    kwargs = {"num_envs": 4, "shards": 2, "packages": [FAULTY_PKG], "progress": False}
    began = time.perf_counter()
    with SandboxVectorEnv("rlmesh_faulty:make", **kwargs) as plain:  # type: ignore[arg-type]
        plain.reset(seed=0)
        start = time.perf_counter() - began
    with SandboxVectorEnv("rlmesh_faulty:make", restarts=1, die_seeds=[2], **kwargs) as envs:  # type: ignore[arg-type]
        envs.reset(seed=0)
        actions = np.zeros(4, dtype=np.int64)
        for _ in range(DIES_AT - 2):
            envs.step(actions)
        t0 = time.perf_counter()
        envs.step(actions)
        step = time.perf_counter() - t0
        t0 = time.perf_counter()
        *_, info = envs.step(actions)  # shard 1 dies: replaced, reset
        failed = time.perf_counter() - t0
        assert "rlmesh_restart" in info, "the faulty shard did not restart"
        t0 = time.perf_counter()
        envs.step(actions)  # the autoreset step: the restarted lanes' reset observations
        after = time.perf_counter() - t0
    return {"start": start, "step": step, "restart": failed, "after": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the restart's WARNING line is expected
    rounds = 2 if args.quick else args.rounds
    one_round()  # builds (or reuses) the image; not timed
    rows = [one_round() for _ in range(rounds)]
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"bench_restart: {rounds} rounds, medians")
    print(f"  vector sandbox start (2 shards) + reset : {med['start'] * 1e3:8.1f} ms")
    print(f"  a plain step                            : {med['step'] * 1e3:8.1f} ms")
    print(f"  the failing step (replace + reset)      : {med['restart'] * 1e3:8.1f} ms  "
          f"({med['restart'] / med['start']:.2f}x the start)")
    print(f"  the step after (autoreset)              : {med['after'] * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
