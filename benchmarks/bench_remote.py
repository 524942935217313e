"""Benchmark rlmesh's remote envs against baselines measured in the same run.

Usage::

    .venv/bin/python benchmarks/bench_remote.py [--quick]

Every figure is printed next to a baseline measured in the same run, and the
targets are ratios, never absolute times: the machines this runs on are shared
and noisy. Measurements are interleaved in rounds (one block of every figure
per round), so a slow phase of the machine hits a figure and its baseline
alike; the "per-round" column shows how much the ratio moved between rounds.
See benchmarks/README.md for what each row means.

The script always exits 0: it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Awaitable, Callable
from typing import Any

from _common import (
    ECHO_SIZE,
    ENV_ID,
    Series,
    Servers,
    blocking_echo_block,
    close_all,
    collected,
    free_port,
    paired,
    print_table,
    ratio_cols,
    run_main,
    serve_argv,
    sync_env_block,
    us,
    vector_round,
    verdict,
)

try:
    import uvloop
except ImportError:  # the uvloop figures are skipped
    uvloop = None  # type: ignore[assignment]

VEC_N = 64
ECHO_TARGET = 2.0  # RemoteEnv.step p50 <= 2x the asyncio echo, over Unix sockets and over TCP with a token
TOKEN = "rlmesh-benchmark-token-0123456789"
THROUGHPUT_TARGET = 0.7  # RemoteVectorEnv env-steps/s >= 0.7x in-process SyncVectorEnv


# ---------------------------------------------------------------------------
# The echo server, run in a subprocess as: bench_remote.py --echo-server PATH
# ---------------------------------------------------------------------------
class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def _echo_main(path: str) -> None:
    loop = asyncio.get_running_loop()
    if path.startswith("tcp:"):
        server = await loop.create_server(_Echo, "127.0.0.1", int(path[4:]))
    else:
        server = await loop.create_unix_server(_Echo, path)
    print("echo ready", flush=True)
    async with server:
        await asyncio.Event().wait()  # until the parent terminates us


def run_echo_server(path: str, use_uvloop: bool) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if use_uvloop:
        uvloop.run(_echo_main(path))
    else:
        asyncio.run(_echo_main(path))


# ---------------------------------------------------------------------------
# Clients and timed blocks
# ---------------------------------------------------------------------------
class LoopRunner:
    """A persistent event loop on the main thread, driven one block at a time."""

    def __init__(self, factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
        self.loop = factory()

    def run(self, aw: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(aw)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


class BlockingProtocolClient:
    """The floor: rlmesh's wire protocol over a plain blocking socket.

    No event loop and no thread hop, so its step time is the server, the codec
    and the socket round trip, and nothing of the client's machinery.
    """

    def __init__(self, path: str) -> None:
        from rlmesh.protocol import (
            DEFAULT_MAX_FRAME_SIZE,
            PROTOCOL_VERSION,
            ClientHello,
            Connection,
            MessageType,
            ResetRequest,
            decode_reset_reply,
            decode_step_reply,
            encode_message,
        )
        from rlmesh.protocol.auth import new_nonce

        self._types, self._encode = MessageType, encode_message
        self._decode_step, self._decode_reset, self._reset = decode_step_reply, decode_reset_reply, ResetRequest
        self._conn = Connection()
        self._ids = itertools.count(1)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(30)
        self._sock.connect(path)
        self._roundtrip(ClientHello(PROTOCOL_VERSION, new_nonce(), DEFAULT_MAX_FRAME_SIZE).encode(next(self._ids)))

    def _roundtrip(self, data: bytes) -> Any:
        self._sock.sendall(data)
        while True:
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            msgs = self._conn.receive_data(chunk)
            if msgs:
                if msgs[0].type is self._types.ERROR:
                    raise RuntimeError(f"server error: {msgs[0].value()!r:.200}")
                return msgs[0]

    def step(self, action: Any) -> Any:
        frame = self._roundtrip(self._encode(self._types.STEP, next(self._ids), action))
        return self._decode_step(frame, None)

    def reset(self, seed: int | None = None) -> Any:
        return self._decode_reset(self._roundtrip(self._reset(seed, None).encode(next(self._ids))), None)

    def close(self) -> None:
        self._sock.close()


async def echo_block(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], seconds: float, warmup: int
) -> list[float]:
    reader, writer = conn
    payload = b"x" * ECHO_SIZE
    clock = time.perf_counter
    for _ in range(warmup):
        writer.write(payload)
        await reader.readexactly(ECHO_SIZE)
    out = []
    end = clock() + seconds
    while True:
        t0 = clock()
        writer.write(payload)
        await reader.readexactly(ECHO_SIZE)
        t1 = clock()
        out.append(t1 - t0)
        if t1 >= end:
            return out


async def async_env_block(env: Any, seconds: float, warmup: int) -> list[float]:
    """Time ``await env.step`` (resets at episode ends are not timed)."""
    clock = time.perf_counter
    step, reset = env.step, env.reset
    for i in range(warmup):
        _, _, term, trunc, _ = await step(i & 1)
        if term or trunc:
            await reset()
    out = []
    i = 0
    end = clock() + seconds
    while True:
        t0 = clock()
        _, _, term, trunc, _ = await step(i & 1)
        t1 = clock()
        i += 1
        out.append(t1 - t0)
        if t1 >= end:
            return out
        if term or trunc:
            await reset()


LEARN_WORK = 5000  # iterations of a pure-Python loop standing in for a learner's step (~300 us)


def learn(work: int = LEARN_WORK) -> int:
    acc = 0
    for i in range(work):
        acc = (acc * 31 + i) % 1_000_003
    return acc


async def split_block(env: Any, actions: Any, seconds: float, warmup: int, split: bool) -> list[float]:
    """Time one trainer iteration: a vector step and a learner's step, in turn (``split=False``:
    ``await step``, then learn) or overlapped (``step_async``, learn, ``step_wait``)."""
    clock = time.perf_counter

    async def once() -> None:
        if split:
            await env.step_async(actions)
            learn()
            await env.step_wait()
        else:
            await env.step(actions)
            learn()

    for _ in range(warmup):
        await once()
    out = []
    end = clock() + seconds
    while True:
        t0 = clock()
        await once()
        t1 = clock()
        out.append(t1 - t0)
        if t1 >= end:
            return out


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer, shorter rounds (about 12 s in all)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 9; --quick 4)")
    ap.add_argument("--block-seconds", type=float, help="seconds per figure per round (default 0.5; --quick 0.22)")
    ap.add_argument("--echo-server", metavar="PATH", help=argparse.SUPPRESS)
    ap.add_argument("--uvloop", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.echo_server:
        run_echo_server(args.echo_server, args.uvloop)
        return 0

    rounds = max(args.rounds or (4 if args.quick else 9), 1)
    block = args.block_seconds or (0.22 if args.quick else 0.5)
    lat_warm, vec_warm = 200, 20  # first round; later rounds warm up a quarter of that
    t_start = time.perf_counter()

    import gymnasium as gym
    import numpy as np

    from rlmesh.client import AsyncRemoteEnv, AsyncRemoteVectorEnv
    from rlmesh.sync import RemoteEnv, RemoteVectorEnv

    # rlmesh's portal thread and `rlmesh serve` both use uvloop when it imports,
    # so the like-for-like echo baseline is the uvloop one when it is installed.
    stack = "uvloop" if uvloop is not None else "asyncio"
    print(f"rlmesh remote benchmark: python {platform.python_version()}, "
          f"uvloop {getattr(uvloop, '__version__', 'not installed')}, {os.cpu_count()} cpus, "
          f"{rounds} rounds x {block:g} s per figure{' (--quick)' if args.quick else ''}")
    print(f"rlmesh's portal loop and `rlmesh serve` run on {stack}; the latency target is against the "
          f"bare asyncio echo (the spec's baseline), and the {stack} echo is shown beside it.", flush=True)

    loop_names = ["asyncio"] + (["uvloop"] if uvloop is not None else [])
    servers = Servers()
    runners: dict[str, LoopRunner] = {}
    cleanup: list[Callable[[], Any]] = []
    try:
        # -- servers, started in parallel; one per client (one client each) --
        echo_cmd = [sys.executable, os.path.abspath(__file__), "--echo-server", "{sock}"]
        echo_socks = {n: servers.start(f"echo-{n}", echo_cmd + (["--uvloop"] if n == "uvloop" else []))
                      for n in loop_names}
        echo_floor_sock = servers.start("echo-floor", echo_cmd + (["--uvloop"] if stack == "uvloop" else []))
        async_socks = {n: servers.start(f"env-async-{n}", serve_argv()) for n in loop_names}
        sync_sock = servers.start("env-sync", serve_argv())
        floor_sock = servers.start("env-floor", serve_argv())
        vec_sock = servers.start("env-vec", serve_argv(VEC_N))
        split_sock = servers.start("env-split", serve_argv(VEC_N))
        # Loopback TCP with a token (and with TLS), beside a blocking TCP echo.
        os.environ["RLMESH_TOKEN"] = TOKEN
        cert, key = os.path.join(servers.dir, "cert.pem"), os.path.join(servers.dir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True)
        tcp_echo_port, tcp_port, tls_port = free_port(), free_port(), free_port()
        servers.start("echo-tcp", echo_cmd[:-1] + [f"tcp:{tcp_echo_port}"])
        servers.start("env-tcp", serve_argv(address=f"tcp://127.0.0.1:{tcp_port}"))
        servers.start("env-tls", serve_argv(address=f"tcp://127.0.0.1:{tls_port}",
                                            extra=("--tls-cert", cert, "--tls-key", key)))
        servers.wait_ready()

        # -- clients -----------------------------------------------------
        async def open_async_env(sock: str) -> Any:
            env = AsyncRemoteEnv(f"unix://{sock}")
            await env.connect()
            await env.reset(seed=0)
            return env

        async def close_async(writer: asyncio.StreamWriter, env: Any) -> None:
            writer.close()
            await writer.wait_closed()
            await env.close()

        def close_on(runner: LoopRunner, writer: asyncio.StreamWriter, env: Any) -> None:
            runner.run(close_async(writer, env))

        echo_conns: dict[str, Any] = {}
        async_envs: dict[str, Any] = {}
        for n in loop_names:
            runner = runners[n] = LoopRunner(uvloop.new_event_loop if n == "uvloop" else asyncio.new_event_loop)
            echo_conns[n] = runner.run(asyncio.open_unix_connection(echo_socks[n]))
            async_envs[n] = runner.run(open_async_env(async_socks[n]))
            cleanup.append(functools.partial(close_on, runner, echo_conns[n][1], async_envs[n]))
        remote = RemoteEnv(f"unix://{sync_sock}")
        cleanup.append(remote.close)
        remote.reset(seed=0)
        echo_floor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        cleanup.append(echo_floor.close)
        echo_floor.settimeout(30)
        echo_floor.connect(echo_floor_sock)
        floor = BlockingProtocolClient(floor_sock)
        cleanup.append(floor.close)
        floor.reset(seed=0)
        tcp_echo = runners["asyncio"].run(asyncio.open_connection("127.0.0.1", tcp_echo_port))
        tcp_echo[1].get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cleanup.append(tcp_echo[1].close)
        remote_tcp = RemoteEnv(f"tcp://127.0.0.1:{tcp_port}", token=TOKEN)
        cleanup.append(remote_tcp.close)
        remote_tcp.reset(seed=0)
        remote_tls = RemoteEnv(f"tcp://127.0.0.1:{tls_port}", token=TOKEN, tls=cert)
        cleanup.append(remote_tls.close)
        remote_tls.reset(seed=0)
        rvec = RemoteVectorEnv(f"unix://{vec_sock}")
        cleanup.append(rvec.close)
        rvec.reset(seed=0)
        lvec = gym.make_vec(ENV_ID, num_envs=VEC_N, vectorization_mode="sync")
        cleanup.append(lvec.close)
        lvec.reset(seed=0)
        actions = (np.arange(VEC_N) & 1).astype(np.int64)

        async def open_async_vec(sock: str) -> Any:
            env = AsyncRemoteVectorEnv(f"unix://{sock}")
            await env.connect()
            await env.reset(seed=0)
            return env

        split_runner = runners[stack]
        split_env = split_runner.run(open_async_vec(split_sock))
        cleanup.append(lambda: split_runner.run(split_env.close()))

        # -- interleaved rounds --------------------------------------------
        echo = {n: Series() for n in loop_names}
        aenv = {n: Series() for n in loop_names}
        senv, fenv, fecho, vrem, vloc = Series(), Series(), Series(), Series(), Series()
        tcp_echo_s, tcp_env, tls_env = Series(), Series(), Series()
        in_turn, overlapped = Series(), Series()
        for r in range(rounds):
            lw = lat_warm if r == 0 else lat_warm // 4
            vw = vec_warm if r == 0 else vec_warm // 4
            for n, runner in runners.items():
                with collected():
                    echo[n].add_latency(runner.run(echo_block(echo_conns[n], block, lw)))
                with collected():
                    aenv[n].add_latency(runner.run(async_env_block(async_envs[n], block, lw)))
            with collected():
                senv.add_latency(sync_env_block(remote, block, lw))
            with collected():
                fecho.add_latency(blocking_echo_block(echo_floor, block, lw))
            with collected():
                fenv.add_latency(sync_env_block(floor, block, lw))
            with collected():
                tcp_echo_s.add_latency(runners["asyncio"].run(echo_block(tcp_echo, block, lw)))
            with collected():
                tcp_env.add_latency(sync_env_block(remote_tcp, block, lw))
            with collected():
                tls_env.add_latency(sync_env_block(remote_tls, block, lw))
            vector_round(((rvec, vrem), (lvec, vloc)), actions, block, vw)
            for split, series in ((False, in_turn), (True, overlapped)):
                with collected():
                    series.add_latency(split_runner.run(split_block(split_env, actions, block, vw, split)))
            print(f"  round {r + 1}/{rounds} ({time.perf_counter() - t_start:.0f} s)", flush=True)
    finally:
        close_all(cleanup)
        for runner in runners.values():
            runner.close()
        servers.close()

    # -- report --------------------------------------------------------------
    base = echo[stack]
    header = ["figure", "value", "baseline", "ratio", "per-round", "target", "result"]
    rows = [[f"echo round trip p50, {n} client+server", us(echo[n].p50), "", "", "", "", ""] for n in loop_names]
    # The spec's baseline is the bare asyncio echo (~105 us there); the echo on uvloop, the
    # loop rlmesh itself uses, is the stricter like-for-like figure and is reported beside it.
    spec_base = echo["asyncio"]
    per = paired(senv.per_round, spec_base.per_round)
    ratio = statistics.median(per)
    rows.append([f"RemoteEnv.step p50 (sync; portal on {stack})", us(senv.p50), f"echo asyncio {us(spec_base.p50)}",
                 *ratio_cols(per), f"<= {ECHO_TARGET:g}x",
                 verdict(ratio <= ECHO_TARGET)])
    if stack != "asyncio":
        rows.append([f"  same, vs the {stack} echo", "", f"echo {stack} {us(base.p50)}",
                     *ratio_cols(paired(senv.per_round, base.per_round)), "info", ""])
    for n in loop_names:
        rows.append([f"AsyncRemoteEnv.step p50 ({n} loop, no portal)", us(aenv[n].p50), f"echo {n} {us(echo[n].p50)}",
                     *ratio_cols(paired(aenv[n].per_round, echo[n].per_round)), "info", ""])
    rows.append([f"echo round trip p50, blocking client, {stack} server", us(fecho.p50), "", "", "", "info", ""])
    rows.append(["echo round trip p50, asyncio client+server, loopback TCP", us(tcp_echo_s.p50), "", "", "", "", ""])
    tper = paired(tcp_env.per_round, tcp_echo_s.per_round)
    rows.append(["RemoteEnv.step p50 (sync, loopback TCP + token)", us(tcp_env.p50), f"TCP echo {us(tcp_echo_s.p50)}",
                 *ratio_cols(tper), f"<= {ECHO_TARGET:g}x", verdict(statistics.median(tper) <= ECHO_TARGET)])
    rows.append(["RemoteEnv.step p50 (sync, loopback TCP + token + TLS)", us(tls_env.p50),
                 f"TCP echo {us(tcp_echo_s.p50)}", *ratio_cols(paired(tls_env.per_round, tcp_echo_s.per_round)),
                 "info", ""])
    rows.append(["floor: blocking-socket rlmesh client p50", us(fenv.p50), f"blocking echo {us(fecho.p50)}",
                 *ratio_cols(paired(fenv.per_round, fecho.per_round)), "info", ""])
    a = aenv[stack]
    rows.append(["RemoteEnv.step p50 split into:", "", "", "", "", "", ""])
    rows.append(["  socket round trip (blocking echo)", us(fecho.p50), "", "", "", "info", ""])
    rows.append(["  server + codec (floor - blocking echo)", us(fenv.p50 - fecho.p50), "", "", "", "info", ""])
    rows.append([f"  async core + {stack} client loop (async - floor)", us(a.p50 - fenv.p50), "", "", "", "info", ""])
    rows.append(["  portal hand-off (sync - async)", us(senv.p50 - a.p50), "", "", "", "info", ""])
    rem, loc = statistics.median(vrem.per_round), statistics.median(vloc.per_round)
    vper = paired(vrem.per_round, vloc.per_round)
    vratio = statistics.median(vper)
    rows.append([f"RemoteVectorEnv N={VEC_N} env-steps/s", f"{rem:,.0f}/s", f"SyncVectorEnv {loc:,.0f}/s",
                 *ratio_cols(vper), f">= {THROUGHPUT_TARGET:g}x",
                 verdict(vratio >= THROUGHPUT_TARGET)])
    rows.append(["  vector step p50, remote vs in-process", us(vrem.p50), us(vloc.p50), f"{vrem.p50 / vloc.p50:.2f}x",
                 "", "info", ""])
    t_learn = min(timeit.repeat(learn, number=200, repeat=5)) / 200
    rows.append([f"trainer iteration, N={VEC_N}: step then learn ({us(t_learn)})", us(in_turn.p50), "", "", "", "info", ""])
    rows.append(["  the same, step_async / learn / step_wait", us(overlapped.p50), "step then learn",
                 *ratio_cols(paired(in_turn.per_round, overlapped.per_round)), "info", ""])
    print()
    print_table(header, rows)
    print(f"\nratio: the median over rounds of the ratio within each round; per-round: its range (a noise gauge). "
          f"Total {time.perf_counter() - t_start:.0f} s.")
    return 0


if __name__ == "__main__":
    run_main(main)
