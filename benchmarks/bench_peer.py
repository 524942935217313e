"""rlmesh beside the published ``rlmesh`` 0.1.0 (a gRPC peer with a Rust core that shares our name).

Usage::

    .venv/bin/python benchmarks/bench_peer.py [--quick]

The peer is installed by this script into a venv of its own (``.cache/peer-venv``; it is never
imported here: the names clash), with Gymnasium. Both sides serve CartPole-v1 from a separate
process over a Unix socket; the peer's clients run in a worker process of its venv, ours in this
one, and rounds alternate between them. Rows: the single-env step p50, and a 64-lane vector
env's env-steps/s. Always exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from _common import Series, Servers, close_all, print_table, run_main, serve_argv, sync_env_block, us, vector_block

ROOT = Path(__file__).resolve().parents[1]
PEER_VENV = ROOT / ".cache" / "peer-venv"
PEER = "rlmesh==0.1.0"
VEC_N = 64

_PEER_SERVER = textwrap.dedent("""
    import os, signal, sys, time, warnings
    warnings.simplefilter("ignore")
    import gymnasium as gym
    import rlmesh
    path, lanes = sys.argv[1], int(sys.argv[2])
    env = gym.make("CartPole-v1") if lanes == 0 else [gym.make("CartPole-v1") for _ in range(lanes)]
    server = rlmesh.EnvServer(env, "unix://" + path)
    server.start()
    print("peer ready", flush=True)
    signal.sigwait([signal.SIGTERM, signal.SIGINT])
    server.shutdown()
""")

_PEER_WORKER = textwrap.dedent("""
    import json, sys, time, warnings
    warnings.simplefilter("ignore")
    import numpy as np
    from rlmesh.numpy import RemoteEnv, RemoteVectorEnv
    single, vector = RemoteEnv("unix://" + sys.argv[1]), RemoteVectorEnv("unix://" + sys.argv[2])
    single.reset(seed=0)
    vector.reset(seed=0)
    actions = (np.arange(vector.num_envs) & 1).astype(np.int64)
    print("worker ready", flush=True)
    for line in sys.stdin:
        seconds = float(line)
        lat, i = [], 0
        end = time.perf_counter() + seconds
        while True:
            t0 = time.perf_counter()
            out = single.step(i & 1)
            t1 = time.perf_counter()
            lat.append(t1 - t0)
            i += 1
            if out[2] or out[3]:
                single.reset()
            if t1 >= end:
                break
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            vector.step(actions)
            steps += 1
        rate = steps * vector.num_envs / (time.perf_counter() - start)
        print(json.dumps({"latency": lat, "rate": rate}), flush=True)
""")


def ensure_peer() -> Path:
    """The peer's venv (created with the peer and Gymnasium on first use)."""
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        print(f"installing {PEER} into {PEER_VENV} (a venv of its own)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", PEER, "gymnasium"],
                       check=True, env={k: v for k, v in os.environ.items() if k not in ("PIP_NO_INDEX", "PIP_FIND_LINKS")})
    return python


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    rounds, block = (3, 0.4) if args.quick else (7, 1.0)
    peer_python = ensure_peer()

    import gymnasium as gym  # noqa: F401
    import numpy as np

    from rlmesh.sync import RemoteEnv, RemoteVectorEnv

    tmp = tempfile.mkdtemp(prefix="rlmesh-peer-")
    procs: list[subprocess.Popen[str]] = []
    cleanup: list[Any] = []
    servers = Servers()
    try:
        paths = {name: os.path.join(tmp, f"{name}.sock") for name in ("single", "vector")}
        for name, lanes in (("single", 0), ("vector", VEC_N)):
            proc = subprocess.Popen([str(peer_python), "-c", _PEER_SERVER, paths[name], str(lanes)],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            procs.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().startswith("peer ready")
        worker = subprocess.Popen([str(peer_python), "-c", _PEER_WORKER, paths["single"], paths["vector"]],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(worker)
        assert worker.stdout is not None and worker.stdin is not None
        assert worker.stdout.readline().startswith("worker ready")
        ours_single = servers.start("ours-single", serve_argv())
        ours_vector = servers.start("ours-vector", serve_argv(VEC_N))
        servers.wait_ready()
        single = RemoteEnv(f"unix://{ours_single}")
        vector = RemoteVectorEnv(f"unix://{ours_vector}")
        cleanup += [single.close, vector.close]
        single.reset(seed=0)
        vector.reset(seed=0)
        actions = (np.arange(VEC_N) & 1).astype(np.int64)
        ours_lat, peer_lat = Series(), Series()
        ours_rate: list[float] = []
        peer_rate: list[float] = []
        t_start = time.perf_counter()
        for r in range(rounds):
            worker.stdin.write(f"{block}\n")
            worker.stdin.flush()
            result = json.loads(worker.stdout.readline())
            peer_lat.add_latency(result["latency"])
            peer_rate.append(result["rate"])
            ours_lat.add_latency(sync_env_block(single, block, 50))
            ours_rate.append(vector_block(vector, actions, block, 5)[1])
            print(f"  round {r + 1}/{rounds} ({time.perf_counter() - t_start:.0f} s)", flush=True)
    finally:
        close_all(cleanup)
        servers.close()
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)

    per_lat = [a / b for a, b in zip(ours_lat.per_round, peer_lat.per_round, strict=True)]
    per_rate = [a / b for a, b in zip(ours_rate, peer_rate, strict=True)]
    rows = [
        ["RemoteEnv.step p50, CartPole", us(ours_lat.p50), f"rlmesh 0.1.0 {us(peer_lat.p50)}",
         f"{statistics.median(per_lat):.3f}x", f"{min(per_lat):.3f}-{max(per_lat):.3f}", "info", ""],
        [f"RemoteVectorEnv N={VEC_N} env-steps/s", f"{statistics.median(ours_rate):,.0f}/s",
         f"rlmesh 0.1.0 {statistics.median(peer_rate):,.0f}/s", f"{statistics.median(per_rate):.1f}x",
         f"{min(per_rate):.1f}-{max(per_rate):.1f}", "info", ""],
    ]
    print()
    print_table(["figure", "ours", "the peer", "ratio", "per-round", "target", "result"], rows)
    print("\nratio: ours over the peer's (for latency lower is better; for throughput higher is better).")
    return 0


if __name__ == "__main__":
    run_main(main)
