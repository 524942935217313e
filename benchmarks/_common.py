"""Helpers shared by the benchmarks (bench_*.py import this as ``_common``).

Server subprocesses, timed blocks, per-round series and the report table. The
method they share is described in benchmarks/README.md: only ratios against a
baseline measured in the same run are judged, in interleaved rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

ENV_ID = "CartPole-v1"
READY_TIMEOUT = 60.0


# ---------------------------------------------------------------------------
# Server subprocesses
# ---------------------------------------------------------------------------
class Servers:
    """Server subprocesses in one temp dir; :meth:`close` stops them all and removes it."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="rlmesh-bench-")
        self.procs: list[tuple[str, subprocess.Popen[str], str]] = []

    def start(self, name: str, argv: list[str]) -> str:
        """Start ``argv`` (``{sock}`` is replaced by a socket path); return the path."""
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
        """Wait until every server printed its ready line (they start in parallel)."""
        deadline = time.monotonic() + READY_TIMEOUT
        with selectors.DefaultSelector() as sel:
            for name, proc, log in self.procs:
                assert proc.stdout is not None
                sel.register(proc.stdout, selectors.EVENT_READ, (name, proc, log))
            waiting = len(self.procs)
            while waiting:
                left = deadline - time.monotonic()
                events = sel.select(timeout=left) if left > 0 else []
                if not events:
                    raise RuntimeError(f"servers not ready after {READY_TIMEOUT:g}s")
                for key, _ in events:
                    name, proc, log = key.data
                    line = key.fileobj.readline()  # type: ignore[union-attr]
                    if not line:
                        with open(log) as f:
                            tail = f.read()[-2000:]
                        raise RuntimeError(f"server {name} exited (rc={proc.wait()}):\n{tail}")
                    if "ready" in line:
                        sel.unregister(key.fileobj)
                        waiting -= 1

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


def serve_argv(num_envs: int | None = None, address: str = "unix://{sock}", extra: tuple[str, ...] = ()) -> list[str]:
    """``python -m rlmesh.serve`` for CartPole-v1 on ``{sock}`` (see :meth:`Servers.start`)."""
    argv = [sys.executable, "-m", "rlmesh.serve", ENV_ID, "--address", address, "--log-level", "WARNING", *extra]
    if num_envs is not None:
        argv += ["--num-envs", str(num_envs), "--vectorization-mode", "sync"]
    return argv


# ---------------------------------------------------------------------------
# Timed blocks
# ---------------------------------------------------------------------------
def sync_env_block(env: Any, seconds: float, warmup: int) -> list[float]:
    """Time ``env.step`` (resets at episode ends are not timed)."""
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


ECHO_SIZE = 64
"""Bytes of each echo round trip."""


def blocking_echo_block(sock: Any, seconds: float, warmup: int) -> list[float]:
    """The echo round trip over a plain blocking socket (the floor's baseline)."""
    payload = b"x" * ECHO_SIZE
    clock = time.perf_counter

    def once() -> None:
        sock.sendall(payload)
        got = 0
        while got < ECHO_SIZE:
            n = len(sock.recv(ECHO_SIZE - got))
            if not n:
                raise ConnectionError("the echo server closed the connection")
            got += n

    for _ in range(warmup):
        once()
    out = []
    end = clock() + seconds
    while True:
        t0 = clock()
        once()
        t1 = clock()
        out.append(t1 - t0)
        if t1 >= end:
            return out


def vector_block(env: Any, actions: Any, seconds: float, warmup: int) -> tuple[list[float], float]:
    """Step a vector env (autoreset included); return per-step times and env-steps/s."""
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
            return out, len(actions) * len(out) / (t1 - start)


def vector_round(pairs: Any, actions: Any, seconds: float, warmup: int) -> None:
    """One :func:`vector_block` per ``(env, series)``, each recorded as samples and a round rate."""
    for env, series in pairs:
        with collected():
            samples, rate = vector_block(env, actions, seconds, warmup)
        series.samples += samples
        series.per_round.append(rate)


def free_port() -> int:
    """A free TCP port on loopback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_rounds(doc: str, argv: list[str] | None, *, rounds: tuple[int, int],
                 block: tuple[float, float]) -> tuple[int, float]:
    """``--quick``/``--rounds``/``--block-seconds`` for a benchmark with no other options; returns
    the rounds and the seconds per block (``rounds`` and ``block`` are the (quick, full) defaults)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    ap.add_argument("--rounds", type=int, help=f"interleaved rounds (default {rounds[1]}; --quick {rounds[0]})")
    ap.add_argument("--block-seconds", type=float,
                    help=f"seconds per figure per round (default {block[1]:g}; --quick {block[0]:g})")
    args = ap.parse_args(argv)
    return args.rounds or rounds[not args.quick], args.block_seconds or block[not args.quick]


def close_all(cleanup: list[Callable[[], Any]]) -> None:
    """Call the closers in reverse order; one failing does not stop the rest."""
    for close in reversed(cleanup):
        with contextlib.suppress(Exception):
            close()


@contextlib.contextmanager
def collected() -> Iterator[None]:
    """Start a block on a freshly collected heap, so earlier garbage is not timed in it."""
    gc.collect()
    yield


@dataclass
class Series:
    """One figure: every sample, and one value per round (for paired ratios)."""

    samples: list[float] = field(default_factory=list)
    per_round: list[float] = field(default_factory=list)

    def add_latency(self, samples: list[float]) -> None:
        self.samples += samples
        self.per_round.append(statistics.median(samples))

    @property
    def p50(self) -> float:
        return statistics.median(self.samples)


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} µs"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.0f} ms"


def paired(a: list[float], b: list[float]) -> list[float]:
    """The ratio a/b within each round."""
    return [x / y for x, y in zip(a, b, strict=True)]


def ratio_cols(per: list[float]) -> list[str]:
    """The median of the per-round ratios (robust to drift between rounds), and their range."""
    spread = f"{min(per):.2f}–{max(per):.2f}" if len(per) > 1 else "-"
    return [f"{statistics.median(per):.2f}x", spread]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))


def run_main(main: Callable[[], Any]) -> None:
    """Run a benchmark's ``main`` and exit 0 whatever happens: a benchmark reports, it never fails a build."""
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    except Exception as exc:
        print(f"benchmark error: {type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(0)
