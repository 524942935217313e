"""The client's request path (issue #25): what one step costs the client, against its floors.

Figures, each a ratio measured in one run (interleaved rounds, medians of per-round ratios):

* ``RemoteEnv.step`` p50 against a blocking framed echo on the same kind of Unix socket (the
  floor: one ``sendall`` and one ``recv`` of a 64-byte frame from a plain blocking socket).
* Client CPU per extra shard: ``RemoteVectorEnv`` over 8 ``rlmesh serve`` processes of 8 CartPole
  lanes against one of 64 lanes (the same 64 lanes), this process's CPU time per step, the
  difference divided by 7. Beside it the floor: a bare client that writes a small message to
  each of K echo processes and polls until each answered (no framing, no decode).
* ``RemoteVectorEnv`` CartPole N=64 env-steps/s against Gymnasium's in-process ``SyncVectorEnv``.

Loopback only: Unix sockets in a temporary directory, every server a subprocess, all stopped
on exit. Usage: ``python benchmarks/bench_hot_path.py [--quick] [--rounds N] [--block-seconds S]``.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import statistics
import sys
import time
from typing import Any

import gymnasium as gym
import numpy as np
from _common import (
    ECHO_SIZE,
    Series,
    Servers,
    blocking_echo_block,
    close_all,
    collected,
    parse_rounds,
    print_table,
    ratio_cols,
    serve_argv,
    sync_env_block,
    us,
    vector_round,
)

N = 64
K = 8


def _echo_server(path: str) -> None:
    # A blocking echo of one connection: the floor's server (no loop, no parsing).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    print("echo ready", flush=True)
    conn, _ = srv.accept()
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


def _fan_out_cpu(socks: list[socket.socket], seconds: float) -> float:
    """Client CPU per round over ``socks``: a small write to each, then poll until each answered."""
    payload = b"x" * ECHO_SIZE
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks}
    for s in socks:
        poller.register(s.fileno(), select.POLLIN)
    rounds = 0
    cpu0, end = time.process_time(), time.perf_counter() + seconds
    while time.perf_counter() < end:
        for s in socks:
            s.send(payload)
        left = len(socks)
        while left:
            for fd, _ in poller.poll():
                by_fd[fd].recv(65536)
                left -= 1
        rounds += 1
    return (time.process_time() - cpu0) / rounds


def _vector_cpu(env: Any, actions: Any, seconds: float, warmup: int) -> float:
    step = env.step
    for _ in range(warmup):
        step(actions)
    steps = 0
    cpu0, end = time.process_time(), time.perf_counter() + seconds
    while time.perf_counter() < end:
        step(actions)
        steps += 1
    return (time.process_time() - cpu0) / steps


def main(argv: list[str] | None = None) -> None:
    import rlmesh

    rounds, block = parse_rounds(__doc__ or "", argv, rounds=(3, 7), block=(0.3, 0.6))
    warmup = 30
    servers = Servers()
    cleanup: list[Any] = [servers.close]
    try:
        me = [sys.executable, os.path.abspath(__file__), "--echo-server", "{sock}"]
        echo_sock = servers.start("echo", me)
        fan_socks = [servers.start(f"fan{j}", me) for j in range(K)]
        one_sock = servers.start("env", serve_argv())
        wide_sock = servers.start("wide", serve_argv(N))
        shard_socks = [servers.start(f"shard{j}", serve_argv(N // K)) for j in range(K)]
        servers.wait_ready()

        def connect(path: str) -> socket.socket:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            cleanup.append(s.close)
            return s

        echo = connect(echo_sock)
        fans = [connect(p) for p in fan_socks]
        env = rlmesh.RemoteEnv(f"unix://{one_sock}")
        cleanup.append(env.close)
        env.reset(seed=0)
        wide = rlmesh.RemoteVectorEnv(f"unix://{wide_sock}")
        cleanup.append(wide.close)
        sharded = rlmesh.RemoteVectorEnv([f"unix://{p}" for p in shard_socks])
        cleanup.append(sharded.close)
        local = gym.make_vec("CartPole-v1", num_envs=N, vectorization_mode="sync")
        cleanup.append(local.close)
        for v in (wide, sharded, local):
            v.reset(seed=0)
        actions = np.ones(N, dtype=np.int64)

        floor, step = Series(), Series()
        cpu_one, cpu_k, fan_one, fan_k = [], [], [], []
        remote_rate, local_rate = Series(), Series()
        for _ in range(rounds):
            with collected():
                floor.add_latency(blocking_echo_block(echo, block, warmup))
            with collected():
                step.add_latency(sync_env_block(env, block, warmup))
            with collected():
                cpu_one.append(_vector_cpu(wide, actions, block, warmup))
            with collected():
                cpu_k.append(_vector_cpu(sharded, actions, block, warmup))
            with collected():
                fan_one.append(_fan_out_cpu(fans[:1], block))
                fan_k.append(_fan_out_cpu(fans, block))
            vector_round([(wide, remote_rate), (local, local_rate)], actions, block, warmup)
    finally:
        close_all(cleanup)

    per_shard = [(k - o) / (K - 1) for k, o in zip(cpu_k, cpu_one, strict=True)]
    floor_per_shard = [(k - o) / (K - 1) for k, o in zip(fan_k, fan_one, strict=True)]
    step_ratio = [s / f for s, f in zip(step.per_round, floor.per_round, strict=True)]
    tput = [r / g for r, g in zip(remote_rate.per_round, local_rate.per_round, strict=True)]
    print(f"{rounds} rounds of {block:g} s per figure; {os.cpu_count()} cores")
    rows = [
        ["blocking framed echo p50 (floor)", us(floor.p50), "", ""],
        ["RemoteEnv.step p50 / blocking echo", us(step.p50), *ratio_cols(step_ratio)],
        [f"client CPU per step, 1 server x {N} lanes", us(statistics.median(cpu_one)), "", ""],
        [f"client CPU per step, {K} servers x {N // K} lanes", us(statistics.median(cpu_k)), "", ""],
        ["client CPU per extra shard", us(statistics.median(per_shard)),
         f"{min(per_shard) * 1e6:.1f}–{max(per_shard) * 1e6:.1f} µs", ""],
        ["floor: bare fan-out CPU per extra socket", us(statistics.median(floor_per_shard)), "", ""],
        [f"RemoteVectorEnv N={N} / in-process SyncVectorEnv",
         f"{statistics.median(remote_rate.per_round):,.0f}/s", *ratio_cols(tput)],
    ]
    print_table(["figure", "value", "ratio (median)", "range"], rows)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--echo-server":
        _echo_server(sys.argv[2])
    else:
        from _common import run_main

        run_main(main)
