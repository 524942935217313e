"""Benchmark rlmesh's Docker sandboxes against baselines measured in the same run.

Usage::

    .venv/bin/python benchmarks/bench_sandbox.py [--quick]

It needs a running Docker engine, the docker CLI, and a base image (``scripts/dev
setup`` makes one). The sandbox image is built or reused once before anything is
timed. Every figure is printed next to a baseline measured in the same run, in
interleaved rounds; see benchmarks/README.md for the method and for what each
row means. Every container it starts is removed on exit, even after an error or
Ctrl-C. It never pulls an image (``RLMESH_PULL_POLICY`` defaults to ``never``).

The script always exits 0: it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import re
import statistics
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

from _common import (
    ENV_ID,
    Series,
    Servers,
    close_all,
    collected,
    ms,
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

os.environ.setdefault("RLMESH_PULL_POLICY", "never")  # a benchmark never reaches a registry

VEC_N = 64
CONCURRENT = 8
START_RATIO_TARGET = 4.0  # start to first reset <= 4x a bare `docker run --rm IMAGE true`
START_ABS_TARGET = 1.0  # ... and <= 1 s (the spec's absolute target)
THROUGHPUT_TARGET = 0.7  # SandboxVectorEnv env-steps/s >= 0.7x in-process SyncVectorEnv
RELAY_TARGET = 1.5  # the relay path's step <= 1.5x the Unix-socket sandbox step
STEP_TARGET = 1.2  # SandboxEnv.step p50 <= 1.2x RemoteEnv.step p50 against a host server
BENCH_LABEL = "rlmesh.bench"  # on the baseline `docker run` containers, for the exit sweep
TOKEN = uuid.uuid4().hex[:12]


# ---------------------------------------------------------------------------
# Docker CLI and rlmesh's log records
# ---------------------------------------------------------------------------
def docker_cli(*args: str) -> str:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)
    if out.returncode:
        raise RuntimeError(f"docker {' '.join(args[:2])} failed (rc={out.returncode}): {out.stderr.strip()[-500:]}")
    return out.stdout + out.stderr


def docker_time(text: str) -> float:
    """An engine timestamp (RFC 3339 with nanoseconds) as a ``time.time()`` value."""
    m = re.fullmatch(r"([0-9T:-]+)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text.strip())
    if m is None:
        raise ValueError(f"unexpected docker timestamp {text!r}")
    whole = datetime.fromisoformat(m[1] + ("+00:00" if m[3] == "Z" else m[3])).timestamp()
    return whole + float(f"0.{m[2] or 0}")


class Records(logging.Handler):
    """Keeps rlmesh's log records: their timestamps time the start phases; warnings are shown once."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.warnings: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if record.levelno >= logging.WARNING:
            self.warnings[f"{record.name}: {record.getMessage()}"] += 1

    def first(self, prefix: str) -> float:
        """The time of the first kept record whose message contains ``prefix``."""
        return next(r.created for r in self.records if prefix in r.getMessage())


# The phases of one SandboxEnv start, from host clocks (time.time()), rlmesh's log
# records and the engine's own timestamps (the engine runs on this host's clock).
PHASES = [
    ("host: source, base image, image lookup", "begin", "image"),
    ("host: socket dir and listener, engine info, create request", "image", "created"),
    ("engine: create + start until the process runs", "created", "running"),
    ("container: python start, imports, env, dial, HELLO", "running", "ready"),
    ("host: adopt the connection, return to the caller", "ready", "constructed"),
    ("reset(seed=0)", "constructed", "reset"),
]


def start_phases(records: Records, cid: str, marks: dict[str, float]) -> dict[str, float]:
    """Fill ``marks`` (``begin``, ``constructed``, ``reset`` already in) with the other phase bounds."""
    created, running = docker_cli("inspect", "-f", "{{.Created}} {{.State.StartedAt}}", cid).split()
    marks.update(
        image=records.first("reusing sandbox image"), created=docker_time(created),
        running=docker_time(running), ready=records.first("its server connected"),
    )
    return {name: marks[b] - marks[a] for name, a, b in PHASES}


# ---------------------------------------------------------------------------
# Timed starts
# ---------------------------------------------------------------------------
def docker_true(image: str) -> float:
    """The baseline: a bare container run with the docker CLI, as a user would time it."""
    t0 = time.perf_counter()
    docker_cli("run", "--rm", "--network", "none", "--label", f"{BENCH_LABEL}={TOKEN}", image, "true")
    return time.perf_counter() - t0


def sandbox_start(sandbox_cls: Any, records: Records) -> tuple[float, float, dict[str, float]]:
    """``SandboxEnv(ENV_ID)`` + ``reset(seed=0)``, then ``close()``: (start s, close s, phases)."""
    records.records.clear()
    begin = time.time()
    t0 = time.perf_counter()
    env = sandbox_cls(ENV_ID)
    try:
        constructed = time.time()
        env.reset(seed=0)
        t1 = time.perf_counter()
        marks = {"begin": begin, "constructed": constructed, "reset": time.time()}
        try:  # untimed; a diagnostic, so a failure only leaves the split out
            phases = start_phases(records, env.container_id, marks)
        except Exception as exc:
            records.warnings[f"bench: the start split failed: {type(exc).__name__}: {exc}"] += 1
            phases = {}
    finally:
        t2 = time.perf_counter()
        env.close()
    return t1 - t0, time.perf_counter() - t2, phases


def runsc_available() -> bool:
    """Whether the engine has gVisor's runsc (``scripts/dev setup`` registers it)."""
    return '"runsc"' in docker_cli("info", "--format", "{{json .Runtimes}}")


def runtime_start(sandbox_cls: Any, runtime: str | None) -> float:
    """``SandboxEnv(ENV_ID, runtime=...)`` + ``reset(seed=0)`` (close untimed)."""
    t0 = time.perf_counter()
    env = sandbox_cls(ENV_ID, runtime=runtime)
    try:
        env.reset(seed=0)
        return time.perf_counter() - t0
    finally:
        env.close()


def async_starts(async_cls: Any, n: int) -> tuple[float, float]:
    """Start ``n`` AsyncSandboxEnv at once (gather) on a fresh loop, reset each: (wall to all reset, close wall)."""

    async def one(env: Any) -> None:
        await env.start()
        await env.reset(seed=0)

    async def main() -> tuple[float, float]:
        t0 = time.perf_counter()
        envs = [async_cls(ENV_ID) for _ in range(n)]
        try:
            await asyncio.gather(*(one(env) for env in envs))
            t1 = time.perf_counter()
        finally:
            t2 = time.perf_counter()
            await asyncio.gather(*(env.close() for env in envs), return_exceptions=True)
        return t1 - t0, time.perf_counter() - t2

    return asyncio.run(main())


def async_start(async_cls: Any) -> tuple[float, float]:
    """``async with AsyncSandboxEnv(ENV_ID) as env: await env.reset(seed=0)`` on a fresh loop."""

    async def main() -> tuple[float, float]:
        t0 = time.perf_counter()
        async with async_cls(ENV_ID) as env:
            await env.reset(seed=0)
            t1 = time.perf_counter()
        return t1 - t0, time.perf_counter() - t1

    return asyncio.run(main())


def host_serve_start() -> float:
    """``python -m rlmesh.serve`` on the host, from spawn to its ready line."""
    servers = Servers()
    try:
        t0 = time.perf_counter()
        servers.start("env", serve_argv())
        servers.wait_ready()
        return time.perf_counter() - t0
    finally:
        servers.close()


def sweep_containers(owner: str) -> list[str]:
    """Remove any container this run left behind (there should be none); return them, described."""
    left: list[str] = []
    for kind, label in (("sandbox", f"rlmesh.owner={owner}"), ("docker run", f"{BENCH_LABEL}={TOKEN}")):
        ids = docker_cli("ps", "-aq", "--filter", f"label={label}").split()
        if ids:
            docker_cli("rm", "-f", *ids)
        left += [f"{kind} {cid[:12]}" for cid in ids]
    return left


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer, shorter rounds (about 20 s in all)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 9; --quick 4)")
    ap.add_argument("--starts", type=int, help="starts of each kind per round (default 2; --quick 1)")
    ap.add_argument("--block-seconds", type=float, help="seconds per step figure per round (default 0.5; --quick 0.2)")
    ap.add_argument("--no-concurrent", action="store_true", help=f"skip the {CONCURRENT} concurrent starts")
    args = ap.parse_args(argv)
    rounds = max(args.rounds or (4 if args.quick else 9), 1)
    starts = max(args.starts or (1 if args.quick else 2), 1)
    block = args.block_seconds or (0.2 if args.quick else 0.5)
    lat_warm, vec_warm = 200, 20  # first round; later rounds warm up a quarter of that
    t_start = time.perf_counter()

    import gymnasium as gym
    import numpy as np

    from rlmesh.numpy import AsyncSandboxEnv, RemoteEnv, SandboxEnv, SandboxVectorEnv
    from rlmesh.sandbox.ownership import owner

    OWNER = owner().label

    records = Records()
    rl_log = logging.getLogger("rlmesh")
    rl_log.addHandler(records)
    rl_log.propagate = False  # rlmesh's warnings are summarised once at the end, not per start
    logging.getLogger("rlmesh.sandbox").setLevel(logging.DEBUG)

    servers = Servers()
    cleanup: list[Callable[[], Any]] = []
    try:
        # -- untimed set-up: the image, warm caches, the long-lived envs -----
        t0 = time.perf_counter()
        env = SandboxEnv(ENV_ID)
        image = env._core.image
        env.close()
        assert image is not None
        image_s = time.perf_counter() - t0
        print(f"rlmesh sandbox benchmark: python {platform.python_version()}, docker engine "
              f"{docker_cli('version', '-f', '{{.Server.Version}}').strip()}, {os.cpu_count()} cpus, "
              f"{rounds} rounds x ({starts} starts of each kind + {block:g} s per step figure)"
              f"{' (--quick)' if args.quick else ''}")
        print(f"image {image} (built or found in {image_s:.1f} s, untimed)", flush=True)
        docker_true(image)
        async_start(AsyncSandboxEnv)

        sock = servers.start("env", serve_argv())
        servers.wait_ready()
        remote = RemoteEnv(f"unix://{sock}")
        cleanup.append(remote.close)
        sbx = SandboxEnv(ENV_ID)
        cleanup.append(sbx.close)
        sbx_tcp = SandboxEnv(ENV_ID, transport="tcp")  # through a relay, with a token
        cleanup.append(sbx_tcp.close)
        sbx_tcp.reset(seed=0)
        gvisor = runsc_available()
        if gvisor:
            sbx_gv = SandboxEnv(ENV_ID, runtime="runsc")
            cleanup.append(sbx_gv.close)
            sbx_gv.reset(seed=0)
        svec = SandboxVectorEnv(ENV_ID, num_envs=VEC_N)
        cleanup.append(svec.close)
        lvec = gym.make_vec(ENV_ID, num_envs=VEC_N, vectorization_mode="sync")
        cleanup.append(lvec.close)
        for e in (remote, sbx, svec, lvec):
            e.reset(seed=0)
        actions = (np.arange(VEC_N) & 1).astype(np.int64)

        # -- interleaved rounds --------------------------------------------
        bare, sstart, sclose, astart, aclose = Series(), Series(), Series(), Series(), Series()
        host, many, many_close = Series(), Series(), Series()
        phases: dict[str, list[float]] = {name: [] for name, _, _ in PHASES}
        step_sbx, step_rem, vsbx, vloc = Series(), Series(), Series(), Series()
        gv_start, gv_ref, step_gv = Series(), Series(), Series()
        step_tcp = Series()
        for r in range(rounds):
            b, s, sc, a, ac = [], [], [], [], []
            for i in range(starts):
                order = ["bare", "sync", "async"]
                for kind in order if (r + i) % 2 == 0 else order[::-1]:  # no figure always goes first
                    if kind == "bare":
                        b.append(docker_true(image))
                    elif kind == "sync":
                        start_s, close_s, split = sandbox_start(SandboxEnv, records)
                        s.append(start_s)
                        sc.append(close_s)
                        for name, value in split.items():
                            phases[name].append(value)
                    else:
                        start_s, close_s = async_start(AsyncSandboxEnv)
                        a.append(start_s)
                        ac.append(close_s)
            for series, samples in ((bare, b), (sstart, s), (sclose, sc), (astart, a), (aclose, ac)):
                series.add_latency(samples)
            host.add_latency([host_serve_start()])
            if not args.no_concurrent:
                wall, close_wall = async_starts(AsyncSandboxEnv, CONCURRENT)
                many.add_latency([wall])
                many_close.add_latency([close_wall])
            lw = lat_warm if r == 0 else lat_warm // 4
            vw = vec_warm if r == 0 else vec_warm // 4
            for single, series in ((sbx, step_sbx), (remote, step_rem), (sbx_tcp, step_tcp)):
                with collected():
                    series.add_latency(sync_env_block(single, block, lw))
            if gvisor:  # gVisor beside runc, in the same round
                gv_ref.add_latency([runtime_start(SandboxEnv, None)])
                gv_start.add_latency([runtime_start(SandboxEnv, "runsc")])
                with collected():
                    step_gv.add_latency(sync_env_block(sbx_gv, block, lw))
            vector_round(((svec, vsbx), (lvec, vloc)), actions, block, vw)
            print(f"  round {r + 1}/{rounds} ({time.perf_counter() - t_start:.0f} s)", flush=True)
    finally:
        close_all(cleanup)
        servers.close()
        with contextlib.suppress(Exception):
            left = sweep_containers(OWNER)
            print(f"containers left behind: {len(left)}{' (removed: ' + ', '.join(left) + ')' if left else ''}")

    # -- report --------------------------------------------------------------
    header = ["figure", "value", "baseline", "ratio", "per-round", "target", "result"]
    rows = [["docker run --rm --network none IMAGE true (CLI) p50", ms(bare.p50), "", "", "", "", ""]]
    for name, st, cl in (("SandboxEnv", sstart, sclose), ("AsyncSandboxEnv (fresh loop)", astart, aclose)):
        per = paired(st.per_round, bare.per_round)
        rows.append([f"{name} start to first reset p50", ms(st.p50), f"docker run {ms(bare.p50)}",
                     *ratio_cols(per), f"<= {START_RATIO_TARGET:g}x",
                     verdict(statistics.median(per) <= START_RATIO_TARGET)])
        rows.append(["  absolute (spec)", ms(st.p50), "", "", "", f"<= {START_ABS_TARGET:g} s",
                     verdict(st.p50 <= START_ABS_TARGET)])
        rows.append(["  close() p50", ms(cl.p50), "", "", "", "info", ""])
    rows.append(["SandboxEnv start split into (p50 of each):", "", "", "", "", "", ""])
    for name, values in phases.items():
        if values:
            rows.append([f"  {name}", ms(statistics.median(values)), "", "", "", "info", ""])
    rows.append(["host python -m rlmesh.serve, spawn to ready p50", ms(host.p50), "", "", "", "info", ""])
    if many.samples:
        per = paired(many.per_round, astart.per_round)
        rows.append([f"{CONCURRENT} AsyncSandboxEnv started at once (gather), wall to all reset p50", ms(many.p50),
                     f"1 start {ms(astart.p50)}", *ratio_cols(per), f"< {CONCURRENT}x (serial)",
                     verdict(statistics.median(per) < CONCURRENT)])
        rows.append([f"  close() of all {CONCURRENT} (gather) p50", ms(many_close.p50), "", "", "", "info", ""])
    srem, sloc = statistics.median(vsbx.per_round), statistics.median(vloc.per_round)
    vper = paired(vsbx.per_round, vloc.per_round)
    rows.append([f"SandboxVectorEnv N={VEC_N} env-steps/s", f"{srem:,.0f}/s", f"SyncVectorEnv {sloc:,.0f}/s",
                 *ratio_cols(vper), f">= {THROUGHPUT_TARGET:g}x", verdict(statistics.median(vper) >= THROUGHPUT_TARGET)])
    rows.append(["  vector step p50, sandbox vs in-process", us(vsbx.p50), us(vloc.p50),
                 f"{vsbx.p50 / vloc.p50:.2f}x", "", "info", ""])
    sper = paired(step_sbx.per_round, step_rem.per_round)
    rows.append(["SandboxEnv.step p50", us(step_sbx.p50), f"RemoteEnv (host serve) {us(step_rem.p50)}",
                 *ratio_cols(sper), f"<= {STEP_TARGET:g}x", verdict(statistics.median(sper) <= STEP_TARGET)])
    tper = paired(step_tcp.per_round, step_sbx.per_round)
    rows.append(["SandboxEnv.step p50 through a relay (TCP + token)", us(step_tcp.p50), f"Unix socket {us(step_sbx.p50)}",
                 *ratio_cols(tper), f"<= {RELAY_TARGET:g}x", verdict(statistics.median(tper) <= RELAY_TARGET)])
    if gv_start.per_round:
        rows.append(["gVisor (runsc) start to first reset p50", ms(gv_start.p50), f"runc start {ms(gv_ref.p50)}",
                     *ratio_cols(paired(gv_start.per_round, gv_ref.per_round)), "info", ""])
        rows.append(["gVisor (runsc) SandboxEnv.step p50", us(step_gv.p50), f"runc step {us(step_sbx.p50)}",
                     *ratio_cols(paired(step_gv.per_round, step_sbx.per_round)), "info", ""])
    print()
    print_table(header, rows)
    print(f"\nratio: the median over rounds of the ratio within each round; per-round: its range (a noise gauge). "
          f"Total {time.perf_counter() - t_start:.0f} s.")
    for message, count in records.warnings.items():
        print(f"note: rlmesh logged {count}x: {message}")
    return 0


if __name__ == "__main__":
    run_main(main)
