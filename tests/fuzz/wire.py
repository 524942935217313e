"""Fuzz the wire protocol against a live server and a live client.

``python -m tests.fuzz.wire [--cases N] [--seed S]`` runs N mutated cases in each direction and
prints what happened; ``tests/integration/test_fuzz.py`` runs a small number of them in CI.

* **Server**: ``python -m rlmesh.serve`` in a subprocess (a Dict/Tuple/Text kitchen-sink env, so
  actions have structure). Each case opens a connection, says a valid HELLO (or, one case in
  five, a mutated one), sends one to three mutated frames and hangs up. The server must stay
  up; after every case a fresh client must be served (else the case is a *hang*). Its peak RSS
  is read from ``/proc``.
* **Client**: an in-process fake server answers ``AsyncRemoteEnv`` with mutated HELLOs and
  replies. Every call must return or raise an ``RLMeshError`` within its deadline; anything
  else is a *crash*, a missed deadline a *hang*.

Mutations are byte flips, truncations, insertions, header field changes (type, id, lengths),
and structural edits of the JSON (a subtree replaced by another value, a tag look-alike, a
buffer reference duplicated), on frames that are valid to begin with.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from rlmesh import AsyncRemoteEnv
from rlmesh.errors import RLMeshError
from rlmesh.protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    CallRequest,
    ClientHello,
    Connection,
    MessageType,
    ResetRequest,
    encode_message,
)
from rlmesh.protocol.auth import new_nonce
from rlmesh.protocol.framing import HEADER, HEADER_SIZE

REPO = Path(__file__).resolve().parents[2]
ENV_ID = "tests.envs:rlmesh-test/KitchenSink-v0"
MAX_FRAME = 1 << 22  # both sides, so a mutated length field is often over it and often under

_TAG_KEYS = ["__nd__", "__ns__", "__no__", "__t__", "__f__", "__i__", "__by__", "__d__", "__g__", "type", "kind"]
_ODD_VALUES: list[Any] = [
    None, True, -1, 0, 2**31, 2**64 - 1, -(2**63), 1e308, "", "x" * 300, [], {}, [[[[[]]]]], {"__by__": 0},
    {"__nd__": 0}, {"__nd__": 99}, {"__no__": [[3], [1]]}, {"__i__": "9" * 5000}, {"__f__": "nan"},
    {"__d__": [[[1], 2]]}, {"__g__": [1, 2]}, {"__t__": 5}, ["<f8", [-1]], ["|V9", [1]],
]


@dataclass
class Report:
    """What a fuzz run saw."""

    direction: str
    cases: int = 0
    crashes: int = 0
    hangs: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    seconds: float = 0.0

    def note(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


# --------------------------------------------------------------------------- mutation

def _split(frame: bytes) -> tuple[list[Any], int, int, Any, bytes]:
    _, _, mtype, rid, jlen, _ = HEADER.unpack_from(frame)
    tree, meta = orjson.loads(frame[HEADER_SIZE : HEADER_SIZE + jlen])
    return [mtype, rid], jlen, mtype, (tree, meta), frame[HEADER_SIZE + jlen :]


def _reframe(mtype: int, rid: int, tree: Any, meta: Any, payload: bytes) -> bytes:
    js = orjson.dumps([tree, meta])
    js += b" " * (-len(js) % 8)
    return HEADER.pack(b"RL", PROTOCOL_VERSION, mtype, rid, len(js), len(payload)) + js + payload


def _edit_tree(rng: random.Random, tree: Any, depth: int = 0) -> Any:
    """Replace one random node of ``tree``."""
    if depth > 6 or not isinstance(tree, (dict, list)) or not tree or rng.random() < 0.3:
        choice = rng.random()
        if choice < 0.5:
            return rng.choice(_ODD_VALUES)
        if choice < 0.7:
            return {rng.choice(_TAG_KEYS): rng.choice(_ODD_VALUES)}
        return [tree, tree] if rng.random() < 0.5 else {"k": tree}
    if isinstance(tree, dict):
        key = rng.choice(list(tree))
        out = dict(tree)
        if rng.random() < 0.15:
            del out[key]
        else:
            out[key] = _edit_tree(rng, tree[key], depth + 1)
        return out
    i = rng.randrange(len(tree))
    out_list = list(tree)
    out_list[i] = _edit_tree(rng, tree[i], depth + 1)
    return out_list


def mutate(rng: random.Random, frame: bytes) -> bytes:
    """One mutation of a valid frame."""
    kind = rng.random()
    data = bytearray(frame)
    if kind < 0.3:  # structural: edit the JSON tree or the buffer table
        (mtype, rid), _, _, (tree, meta), payload = _split(frame)
        if rng.random() < 0.7 or not meta:
            tree = _edit_tree(rng, tree)
        else:
            meta = _edit_tree(rng, meta)
        return _reframe(mtype, rid, tree, meta, payload)
    if kind < 0.5:  # header fields
        field_ = rng.choice(["type", "rid", "jlen", "plen"])
        if field_ == "type":
            data[3] = rng.choice([rng.randrange(256), *range(1, 9)])
        elif field_ == "rid":
            data[4:8] = rng.choice([0, 1, 2**32 - 1, rng.randrange(2**32)]).to_bytes(4, "little")
        else:
            at = 8 if field_ == "jlen" else 12
            old = int.from_bytes(data[at : at + 4], "little")
            new = rng.choice([0, 8, old + 8, max(old - 8, 0), old * 2, 2**31, 2**32 - 8, rng.randrange(2**32)])
            data[at : at + 4] = new.to_bytes(4, "little")
        return bytes(data)
    if kind < 0.75:  # byte flips
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind < 0.9:  # truncation
        return bytes(data[: rng.randrange(len(data))])
    at = rng.randrange(len(data) + 1)  # insertion
    return bytes(data[:at]) + os.urandom(rng.randint(1, 64)) + bytes(data[at:])


def client_frames(rng: random.Random) -> list[bytes]:
    """Valid requests a client may send (after its HELLO)."""
    import gymnasium as gym

    import tests.envs  # noqa: F401

    space = gym.make("rlmesh-test/KitchenSink-v0").action_space
    space.seed(rng.randrange(2**31))
    frames = [
        ResetRequest(rng.randrange(100), {"k": (1, 2)}).encode(2),
        CallRequest("get_attr", "render_mode").encode(5),
        encode_message(MessageType.RENDER, 6, None),
    ]
    frames += [encode_message(MessageType.STEP, 3 + i, space.sample()) for i in range(2)]
    return frames


def _hello() -> bytes:
    return ClientHello(PROTOCOL_VERSION, new_nonce(), MAX_FRAME).encode(1)


# --------------------------------------------------------------------------- against a live server

def _read_until(sock: socket.socket, deadline: float) -> str:
    """Read replies until the server hangs up or goes quiet; returns what happened."""
    conn = Connection(DEFAULT_MAX_FRAME_SIZE)
    kinds = []
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            return "quiet:" + ",".join(kinds[-2:])
        except ConnectionResetError:
            return "reset"
        if not data:
            return "closed:" + ",".join(kinds[-2:])
        for frame in conn.receive_data(data):
            if frame.type is MessageType.ERROR:
                body = frame.value()
                kinds.append(f"error:{body.get('kind') if isinstance(body, dict) else '?'}")
            else:
                kinds.append(frame.type.name)


class _NoHello(Exception):
    pass


def _await_hello(sock: socket.socket, deadline: float = float("inf")) -> bool:
    conn = Connection(DEFAULT_MAX_FRAME_SIZE)
    while time.monotonic() < deadline:
        data = sock.recv(1 << 16)
        if not data:
            return False
        frames = conn.receive_data(data)
        if frames:
            return frames[0].type is MessageType.HELLO
    return False


def _serve(path: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlmesh.serve", ENV_ID, "--address", f"unix://{path}",
         "--max-frame-size", str(MAX_FRAME), "--log-level", "ERROR"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    if not proc.stdout.readline().startswith(b"rlmesh-server ready"):
        proc.kill()
        raise RuntimeError("the fuzzed server did not start")
    return proc


def _healthy(path: str, timeout: float) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(_hello())
            return _await_hello(sock, time.monotonic() + timeout)
    except OSError:
        return False
    return False


def _peak_rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fuzz_server(cases: int, seed: int, *, quiet_after: float = 2.0) -> Report:
    """Run ``cases`` mutated sessions against a live ``rlmesh serve``."""
    rng = random.Random(seed)
    report = Report("server")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rlmesh-fuzz-") as tmp:
        path = os.path.join(tmp, "s.sock")
        proc = _serve(path)
        try:
            seeds = client_frames(rng)
            for case in range(cases):
                if case % 200 == 0:
                    seeds = client_frames(rng)
                outcome = "?"
                try:
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                        sock.settimeout(5)
                        sock.connect(path)
                        hello = _hello()
                        if rng.random() < 0.2:
                            sock.sendall(mutate(rng, hello))
                        else:  # as a real client: wait for the server's HELLO, then send requests
                            sock.sendall(hello)
                            if not _await_hello(sock):
                                raise _NoHello("no HELLO reply to a valid HELLO")
                        for _ in range(rng.randint(1, 3)):
                            frame = rng.choice(seeds)
                            sock.sendall(mutate(rng, frame) if rng.random() < 0.9 else frame)
                        sock.shutdown(socket.SHUT_WR)  # then hang up: a partial frame ends here
                        outcome = _read_until(sock, time.monotonic() + quiet_after)
                except _NoHello as exc:
                    outcome = "no-hello"
                    report.hangs += 1  # a valid HELLO went unanswered
                    report.examples.append(f"case {case}: {exc}")
                except OSError as exc:
                    outcome = f"oserror:{type(exc).__name__}"
                report.cases += 1
                report.note(outcome)
                if proc.poll() is not None:
                    report.crashes += 1
                    report.examples.append(f"case {case}: the server exited with {proc.returncode}")
                    proc = _serve(path)
                elif not _healthy(path, 5.0):
                    report.hangs += 1
                    report.examples.append(f"case {case}: no fresh client was served after it ({outcome})")
            report.peak_rss_mb = _peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.poll() is None:
                proc.kill()
            if proc.stdout:
                proc.stdout.close()
    report.seconds = time.monotonic() - started
    return report


# --------------------------------------------------------------------------- against a live client

def _server_frames() -> tuple[Callable[[int], bytes], list[Callable[[int], bytes]]]:
    """A genuine HELLO for the kitchen-sink env and its genuine replies, by request id."""
    import gymnasium as gym

    import tests.envs  # noqa: F401
    from rlmesh.server.dispatch import describe

    env = gym.make("rlmesh-test/KitchenSink-v0", render_mode="rgb_array")
    parts = describe(env).encode_parts()
    reset = env.reset(seed=0)
    step = env.step(env.action_space.sample())
    frame = env.render()

    def hello(rid: int) -> bytes:
        from rlmesh.protocol import ServerHello

        return ServerHello.frame(parts, rid, None)

    return hello, [
        lambda rid: encode_message(MessageType.RESET, rid, reset),
        lambda rid: encode_message(MessageType.STEP, rid, step),
        lambda rid: encode_message(MessageType.RENDER, rid, frame),
        lambda rid: encode_message(MessageType.ERROR, rid, {"kind": "env", "type": "builtins.ValueError",
                                                             "message": "m", "traceback": "", "space": ""}),
    ]


async def _client_case(rng: random.Random, path: str, hello: Callable[[int], bytes],
                       replies: list[Callable[[int], bytes]]) -> str:
    mutate_hello = rng.random() < 0.25

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(DEFAULT_MAX_FRAME_SIZE)
        try:
            while data := await reader.read(1 << 16):
                for frame in conn.receive_data(data):
                    if frame.type is MessageType.HELLO:
                        out = hello(frame.request_id)
                        writer.write(mutate(rng, out) if mutate_hello else out)
                    elif frame.type is MessageType.CLOSE:
                        writer.write(encode_message(MessageType.CLOSE, frame.request_id, None))
                    else:
                        rid = frame.request_id if rng.random() < 0.95 else rng.randrange(2**32)
                        by_type = {MessageType.RESET: 0, MessageType.STEP: 1, MessageType.RENDER: 2}
                        pick = by_type.get(frame.type, 3) if rng.random() < 0.8 else rng.randrange(len(replies))
                        out = replies[pick](rid)
                        writer.write(mutate(rng, out) if rng.random() < 0.3 else out)
                await writer.drain()
        except Exception:  # the fake server may see anything
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(handle, path)
    try:
        env = AsyncRemoteEnv(f"unix://{path}", connect_timeout=0.3, request_timeout=0.2, max_frame_size=MAX_FRAME)
        try:
            async with asyncio.timeout(10):  # far past every deadline the client has: a hang
                try:
                    await env.connect()
                    await env.reset(seed=0)
                    for _ in range(3):
                        await env.step(env.action_space.sample())
                    await env.render()
                    return "ok"
                except RLMeshError as exc:
                    return type(exc).__name__
                finally:
                    await env.close()
        except TimeoutError:
            return "hang"
    finally:
        server.close()
        await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def fuzz_client(cases: int, seed: int) -> Report:
    """Run ``cases`` sessions of ``AsyncRemoteEnv`` against a fake server sending mutated frames."""
    rng = random.Random(seed)
    report = Report("client")
    hello, replies = _server_frames()
    started = time.monotonic()

    async def main() -> None:
        with tempfile.TemporaryDirectory(prefix="rlmesh-fuzz-") as tmp:
            for case in range(cases):
                try:
                    outcome = await _client_case(rng, os.path.join(tmp, "c.sock"), hello, replies)
                except Exception as exc:  # anything but RLMeshError is a crash
                    outcome = f"crash: {type(exc).__name__}: {exc}"
                report.cases += 1
                if outcome.startswith("crash"):
                    report.crashes += 1
                    if len(report.examples) < 10:
                        report.examples.append(f"case {case}: {outcome[:300]}")
                elif outcome == "hang":
                    report.hangs += 1
                    report.examples.append(f"case {case}: the client missed its deadlines")
                report.note(outcome.split(":")[0])

    asyncio.run(main())
    report.seconds = time.monotonic() - started
    report.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report


def print_report(report: Report) -> None:
    """Print a report as a short table."""
    print(f"\n{report.direction}: {report.cases} cases in {report.seconds:.0f} s, "
          f"{report.crashes} crashes, {report.hangs} hangs, peak RSS {report.peak_rss_mb:.0f} MB")
    for outcome, n in sorted(report.outcomes.items(), key=lambda kv: -kv[1]):
        print(f"  {outcome:<28} {n}")
    for example in report.examples[:10]:
        print(f"  ! {example}")


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.fuzz.wire``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=100_000, help="cases in each direction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["server", "client"], default=None)
    args = parser.parse_args(argv)
    np.random.seed(args.seed)
    reports = []
    if args.only in (None, "server"):
        reports.append(fuzz_server(args.cases, args.seed))
        print_report(reports[-1])
    if args.only in (None, "client"):
        reports.append(fuzz_client(args.cases, args.seed))
        print_report(reports[-1])
    return 1 if any(r.crashes or r.hangs for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
