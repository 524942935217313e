"""Open and close sandboxes in a loop and count what is left: containers, socket dirs, fds.

Usage::

    .venv/bin/python benchmarks/soak_sandbox.py [--cycles 50]

Needs a Docker engine and the CartPole sandbox image (built on first use). Exits 1 if anything
leaked. The figures go to docs/reliability.md.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time


def count_containers() -> int:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", "label=rlmesh.sandbox"], capture_output=True, text=True)
    return len(out.stdout.split())


def count_socket_dirs() -> int:
    root = os.environ.get("RLMESH_RUNTIME_DIR") or tempfile.gettempdir()
    return len(glob.glob(os.path.join(root, f"rlmesh-sbx-{os.getpid()}-*")))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=50)
    args = ap.parse_args()
    os.environ.setdefault("RLMESH_PULL_POLICY", "never")
    from rlmesh.numpy import SandboxEnv

    SandboxEnv("CartPole-v1").close()  # the image, built or reused, outside the count
    fds0, containers0 = len(os.listdir("/proc/self/fd")), count_containers()
    times = []
    for _ in range(args.cycles):
        t0 = time.perf_counter()
        with SandboxEnv("CartPole-v1") as env:
            env.reset(seed=0)
            env.step(0)
        times.append(time.perf_counter() - t0)
    fds, containers, dirs = len(os.listdir("/proc/self/fd")), count_containers(), count_socket_dirs()
    times.sort()
    print(f"{args.cycles} open/reset/step/close cycles: p50 {times[len(times) // 2]:.2f} s per cycle")
    print(f"containers left: {containers - containers0}, socket dirs left: {dirs}, fd change: {fds - fds0:+d}")
    return 1 if containers - containers0 or dirs or fds - fds0 > 2 else 0


if __name__ == "__main__":
    sys.exit(main())
