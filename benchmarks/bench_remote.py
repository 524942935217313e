"""Benchmark rlmesh's remote envs against baselines measured in the same run.

Usage::

    .venv/bin/python benchmarks/bench_remote.py [--quick]

Every figure is reported next to a baseline measured in the same run, and
targets are ratios, never absolute times: the machines this runs on are
shared and noisy. Measurements are interleaved in rounds (one block of every
figure per round), so a slow phase of the machine hits the figure and its
baseline alike. See benchmarks/README.md for what each row means.

The script always exits 0: it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import platform
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

try:
    import uvloop
except ImportError:  # the figures that need it are skipped
    uvloop = None  # type: ignore[assignment]

ECHO_SIZE = 64
VEC_N = 64
ENV_ID = "CartPole-v1"
LATENCY_TARGET = 3.0  # RemoteEnv.step p50 <= 3x the echo round trip p50
THROUGHPUT_TARGET = 0.7  # RemoteVectorEnv env-steps/s >= 0.7x in-process SyncVectorEnv
READY_TIMEOUT = 60.0


# --------------------------------------------------------------------------
# The echo server (runs in a subprocess: bench_remote.py --echo-server PATH)
# --------------------------------------------------------------------------
class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def _echo_main(path: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(_Echo, path)
    print("echo ready", flush=True)
    async with server:
        await asyncio.Event().wait()  # until the parent terminates us


def run_echo_server(path: str, use_uvloop: bool) -> None:
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if use_uvloop:
        uvloop.run(_echo_main(path))
    else:
        asyncio.run(_echo_main(path))


# --------------------------------------------------------------------------
# Subprocess management
# --------------------------------------------------------------------------
class Servers:
    """Start server subprocesses; stop all of them (and their sockets) on exit."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="rlmesh-bench-")
        self.procs: list[tuple[str, subprocess.Popen[str], str]] = []

    def start(self, name: str, argv: list[str]) -> str:
        """Start ``argv`` (which may contain ``{sock}``); return the socket path."""
        sock = os.path.join(self.dir, f"{name}.sock")
        log = os.path.join(self.dir, f"{name}.log")
        with open(log, "w") as err:
            proc = subprocess.Popen(
                [a.replace("{sock}", sock) for a in argv],
                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True,
            )
        self.procs.append((name, proc, log))
        return sock

    def wait_ready(self) -> None:
        """Wait until every server printed its ready line."""
        deadline = time.monotonic() + READY_TIMEOUT
        sel = selectors.DefaultSelector()
        for name, proc, log in self.procs:
            assert proc.stdout is not None
            sel.register(proc.stdout, selectors.EVENT_READ, (name, proc, log))
        waiting = len(self.procs)
        try:
            while waiting:
                left = deadline - time.monotonic()
                events = sel.select(timeout=max(left, 0)) if left > 0 else []
                if not events:
                    raise RuntimeError(f"servers not ready after {READY_TIMEOUT}s; logs in {self.dir}")
                for key, _ in events:
                    name, proc, log = key.data
                    line = key.fileobj.readline()  # type: ignore[union-attr]
                    if not line:
                        with open(log) as f:
                            tail = f.read()[-2000:]
                        raise RuntimeError(f"server {name} exited (rc={proc.poll()}):\n{tail}")
                    if "ready" in line:
                        sel.unregister(key.fileobj)
                        waiting -= 1
        finally:
            sel.close()

    def close(self) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for _, proc, _ in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def serve_argv(num_envs: int | None = None, *, no_uvloop: bool = False) -> list[str]:
    args = [ENV_ID, "--address", "unix://{sock}", "--log-level", "WARNING"]
    if num_envs is not None:
        args += ["--num-envs", str(num_envs), "--vectorization-mode", "sync"]
    if no_uvloop:  # serve() falls back to asyncio when uvloop cannot be imported
        code = "import sys; sys.modules['uvloop'] = None; from rlmesh.serve import main; sys.exit(main(sys.argv[1:]))"
        return [sys.executable, "-c", code, *args]
    return [sys.executable, "-m", "rlmesh.serve", *args]


# --------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------
@dataclass
class Series:
    """Samples of one figure, kept per round so rounds can be paired."""

    samples: list[float] = field(default_factory=list)  # per-op seconds, all rounds
    per_round: list[float] = field(default_factory=list)  # one figure per round

    @property
    def p50(self) -> float:
        return statistics.median(self.samples)


class LoopRunner:
    """A persistent event loop in the main thread, driven block by block."""

    def __init__(self, factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
        self.loop = factory()

    def run(self, coro: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


async def echo_block(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], seconds: float, warmup: int) -> list[float]:
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


def sync_env_block(env: Any, seconds: float, warmup: int) -> list[float]:
    clock = time.perf_counter
    step, reset = env.step, env.reset
    for i in range(warmup):
        _, _, term, trunc, _ = step(i & 1)
        if term or trunc:
            reset()
    out = []
    i = 0
    end = clock() + seconds
    while True:
        t0 = clock()
        _, _, term, trunc, _ = step(i & 1)
        t1 = clock()
        i += 1
        out.append(t1 - t0)
        if t1 >= end:
            return out
        if term or trunc:
            reset()


def vector_block(env: Any, actions: Any, seconds: float, warmup: int) -> tuple[list[float], float]:
    """Step a vector env; return per-step times and env-steps/s over the block."""
    clock = time.perf_counter
    step = env.step
    for _ in range(warmup):
        step(actions)
    out = []
    start = clock()
    end = start + seconds
    while True:
        t0 = clock()
        step(actions)
        t1 = clock()
        out.append(t1 - t0)
        if t1 >= end:
            return out, env.num_envs * len(out) / (t1 - start)


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------
def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} µs"


def spread(ratios: list[float]) -> str:
    if len(ratios) < 2:
        return "-"
    return f"{min(ratios):.2f}–{max(ratios):.2f}"


def print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print(line)
    for r in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


@contextlib.contextmanager
def collected() -> Iterator[None]:
    """Start a block with a fresh heap, so a collection from earlier work does not land in it."""
    gc.collect()
    yield


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer, shorter rounds (about 15 s in all)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 8, quick 3)")
    ap.add_argument("--block-seconds", type=float, default=None,
                    help="time per figure per round (default 0.5, quick 0.15)")
    ap.add_argument("--echo-server", metavar="PATH", help=argparse.SUPPRESS)
    ap.add_argument("--uvloop", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.echo_server:
        run_echo_server(args.echo_server, args.uvloop)
        return 0

    rounds = args.rounds or (3 if args.quick else 8)
    block = args.block_seconds or (0.15 if args.quick else 0.5)
    lat_warm = 50 if args.quick else 200
    vec_warm = 5 if args.quick else 20
    t_start = time.perf_counter()

    import gymnasium as gym
    import numpy as np

    from rlmesh import _portal
    from rlmesh.client import AsyncRemoteEnv
    from rlmesh.sync import RemoteEnv, RemoteVectorEnv

    have_uv = uvloop is not None
    print(f"rlmesh remote benchmark: python {platform.python_version()}, "
          f"uvloop {getattr(uvloop, '__version__', 'not installed')}, {os.cpu_count()} cpus, "
          f"{rounds} rounds x {block:.2f} s blocks{' (quick)' if args.quick else ''}")
    stack = "uvloop" if have_uv else "asyncio"
    print(f"rlmesh's portal and `rlmesh serve` both run on {stack} here; "
          f"the latency target compares against the {stack} echo.")

    servers = Servers()
    runners: dict[str, LoopRunner] = {}
    closers: list[Callable[[], Any]] = []
    try:
        # -- servers, started in parallel ---------------------------------
        echo_cmd = [sys.executable, os.path.abspath(__file__), "--echo-server", "{sock}"]
        echo_paths = {"asyncio": servers.start("echo-asyncio", echo_cmd)}
        if have_uv:
            echo_paths["uvloop"] = servers.start("echo-uvloop", [*echo_cmd, "--uvloop"])
        sync_sock = servers.start("env-sync", serve_argv())
        async_sock = servers.start("env-async", serve_argv())
        vec_sock = servers.start("env-vec", serve_argv(VEC_N))
        servers.wait_ready()

        # -- clients -------------------------------------------------------
        loops = {"asyncio": asyncio.new_event_loop}
        if have_uv:
            loops["uvloop"] = uvloop.new_event_loop
        echo_conns = {}
        async_envs: dict[str, Any] = {}
        for name, factory in loops.items():
            runner = runners[name] = LoopRunner(factory)
            echo_conns[name] = runner.run(asyncio.open_unix_connection(echo_paths[name]))
            # One server serves one client at a time: each loop opens, steps and
            # closes its own connection inside its blocks (see below).
        remote = RemoteEnv(f"unix://{sync_sock}")
        closers.append(remote.close)
        remote.reset(seed=0)
        rvec = RemoteVectorEnv(f"unix://{vec_sock}")
        closers.append(rvec.close)
        rvec.reset(seed=0)
        lvec = gym.make_vec(ENV_ID, num_envs=VEC_N, vectorization_mode="sync")
        closers.append(lvec.close)
        lvec.reset(seed=0)
        actions = (np.arange(VEC_N) & 1).astype(np.int64)

        async def open_async_env() -> Any:
            env = AsyncRemoteEnv(f"unix://{async_sock}")
            await env.connect()
            await env.reset(seed=0)
            return env

        for name, runner in runners.items():
            async_envs[name] = runner.run(open_async_env())

        # -- interleaved rounds -------------------------------------------
        echo = {name: Series() for name in runners}
        aenv = {name: Series() for name in runners}
        senv = Series()
        vrem, vloc = Series(), Series()
        for r in range(rounds):
            warm = lat_warm if r == 0 else lat_warm // 4
            vw = vec_warm if r == 0 else max(vec_warm // 4, 1)
            for name, runner in runners.items():
                with collected():
                    s = runner.run(echo_block(echo_conns[name], block, warm))
                echo[name].samples += s
                echo[name].per_round.append(statistics.median(s))
                with collected():
                    s = runner.run(async_env_block(async_envs[name], block, warm))
                aenv[name].samples += s
                aenv[name].per_round.append(statistics.median(s))
            with collected():
                s = sync_env_block(remote, block, warm)
            senv.samples += s
            senv.per_round.append(statistics.median(s))
            with collected():
                s, rate = vector_block(rvec, actions, block, vw)
            vrem.samples += s
            vrem.per_round.append(rate)
            with collected():
                s, rate = vector_block(lvec, actions, block, vw)
            vloc.samples += s
            vloc.per_round.append(rate)
            print(f"  round {r + 1}/{rounds} done ({time.perf_counter() - t_start:.1f} s)", flush=True)

        for name, runner in runners.items():
            runner.run(async_envs.pop(name).close())
    finally:
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                close()
        for name, runner in runners.items():
            env = async_envs.get(name)
            if env is not None:
                with contextlib.suppress(Exception):
                    runner.run(env.close())
            runner.close()
        servers.close()

    # -- report --------------------------------------------------------------
    base = stack
    base_p50 = echo[base].p50
    base_rounds = echo[base].per_round

    def lat_ratio(series: Series, baseline: Series) -> tuple[float, list[float]]:
        return series.p50 / baseline.p50, [a / b for a, b in zip(series.per_round, baseline.per_round)]

    rows: list[list[str]] = []
    header = ["figure", "value", "baseline", "ratio", "per-round", "target", "result"]
    for name in runners:
        rows.append([f"echo round trip p50, {name} client+server", us(echo[name].p50), "-", "-",
                     "-", "-", "-"])
    ratio, per = lat_ratio(senv, echo[base])
    rows.append([f"RemoteEnv.step p50 (sync, portal on {stack})", us(senv.p50), f"echo {base} {us(base_p50)}",
                 f"{ratio:.2f}x", spread(per), f"<= {LATENCY_TARGET:g}x",
                 "PASS" if ratio <= LATENCY_TARGET else "FAIL"])
    if base != "asyncio":
        r2, p2 = lat_ratio(senv, echo["asyncio"])
        rows.append(["  same, vs the asyncio echo (info)", us(senv.p50), f"echo asyncio {us(echo['asyncio'].p50)}",
                     f"{r2:.2f}x", spread(p2), "-", "-"])
    for name in runners:
        r3, p3 = lat_ratio(aenv[name], echo[name])
        rows.append([f"AsyncRemoteEnv.step p50, {name} client loop", us(aenv[name].p50),
                     f"echo {name} {us(echo[name].p50)}", f"{r3:.2f}x", spread(p3), "(info)", "-"])
    portal_cost = senv.p50 - aenv[base].p50
    rows.append([f"portal hand-off cost (sync - async {base})", us(portal_cost), "-", "-", "-", "-", "-"])
    rem_rate, loc_rate = statistics.median(vrem.per_round), statistics.median(vloc.per_round)
    vratio = rem_rate / loc_rate
    vper = [a / b for a, b in zip(vrem.per_round, vloc.per_round)]
    rows.append([f"RemoteVectorEnv N={VEC_N} env-steps/s", f"{rem_rate:,.0f}/s",
                 f"SyncVectorEnv {loc_rate:,.0f}/s", f"{vratio:.2f}x", spread(vper),
                 f">= {THROUGHPUT_TARGET:g}x", "PASS" if vratio >= THROUGHPUT_TARGET else "FAIL"])
    rows.append([f"  per vector step p50 (remote / in-process)", us(vrem.p50), us(vloc.p50),
                 f"{vrem.p50 / vloc.p50:.2f}x", "-", "-", "-"])
    print()
    print_table(rows, header)
    print(f"\nper-round: min–max of the ratio computed within each round (noise indicator). "
          f"total {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    except Exception as exc:  # a benchmark reports, it does not fail the build
        print(f"benchmark error: {type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(0)
