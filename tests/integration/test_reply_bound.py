"""STEP and RESET replies are bounded by the spaces agreed at the handshake (issue #20, section 3).

A hostile server answers with real frames on a real Unix socket; the client must refuse a reply
larger than its spaces allow on the frame's header, before reading or allocating the body.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from rlmesh.errors import ProtocolError
from rlmesh.protocol import PROTOCOL_VERSION, MessageType, encode_message
from rlmesh.protocol.bounds import DEFAULT_MAX_INFO_SIZE, reply_bound, space_bound
from rlmesh.protocol.framing import HEADER

from ..helpers import FakeServer, open_env

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Callable[..., FakeServer]]:
    servers: list[FakeServer] = []

    def start(reply: Callable[[Any], Any]) -> FakeServer:
        server = FakeServer(str(tmp_path / f"fake{len(servers)}.sock"), reply)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _cartpole_bound(**kwargs: Any) -> int:
    return reply_bound(gym.make("CartPole-v1").observation_space, num_envs=None, **kwargs).size


def _step_reply_of_size(rid: int, size: int) -> bytes:
    """A genuine CartPole STEP reply whose info pads the frame to exactly ``size`` bytes."""
    obs = np.zeros(4, np.float32)
    base = len(encode_message(MessageType.STEP, rid, (obs, 1.0, False, False, {"pad": ""})))
    for k in range(max(size - base - 8, 0), size - base + 1):
        frame = encode_message(MessageType.STEP, rid, (obs, 1.0, False, False, {"pad": "x" * k}))
        if len(frame) == size:
            return frame
    raise AssertionError(f"no padding makes a {size}-byte frame")


async def test_a_reply_at_the_bound_passes_and_one_byte_over_is_refused_on_its_header(fake: Any, flavour: str) -> None:
    bound = _cartpole_bound()
    assert bound % 8 == 0 and DEFAULT_MAX_INFO_SIZE < bound < DEFAULT_MAX_INFO_SIZE + 4096

    def reply(frame: Any) -> bytes:
        rid = frame.request_id
        if rid == 2:  # the first STEP: exactly as big as the spaces allow
            return _step_reply_of_size(rid, bound)
        # The second: a header one byte over the bound (the body is never sent: the header must do).
        return HEADER.pack(b"RL", PROTOCOL_VERSION, MessageType.STEP, rid, 8, bound + 1 - HEADER.size - 8)

    server = fake(reply)
    env = await open_env(flavour, server.address)
    try:
        obs, reward, terminated, truncated, info = await env.step(0)
        assert len(info["pad"]) > bound - 4096 and reward == 1.0
        with pytest.raises(ProtocolError) as err:
            await env.step(0)
        message = str(err.value)
        assert f"frame of {bound + 1} bytes exceeds the maximum of {bound} bytes" in message
        assert "max_info_size" in message and "connection was closed" in message
        core = env.env if flavour == "async" else env.env._core
        assert core._conn is None or core._conn.reply_limit == bound
    finally:
        await env.close()


async def test_max_info_size_moves_the_bound(fake: Any, flavour: str) -> None:
    small = _cartpole_bound(max_info_size=1 << 20)

    def reply(frame: Any) -> bytes:
        return _step_reply_of_size(frame.request_id, small + 8)

    server = fake(reply)
    env = await open_env(flavour, server.address, max_info_size=1 << 20)
    try:
        with pytest.raises(ProtocolError, match=f"exceeds the maximum of {small} bytes"):
            await env.step(0)
    finally:
        await env.close()


async def test_render_and_call_replies_keep_max_frame_size(fake: Any, flavour: str) -> None:
    bound = _cartpole_bound()
    big = np.ones(bound + (1 << 20), np.uint8)  # a render bigger than any STEP reply may be

    def reply(frame: Any) -> bytes:
        if frame.type is MessageType.RENDER:
            return encode_message(MessageType.RENDER, frame.request_id, big)
        return _step_reply_of_size(frame.request_id, 4096)

    server = fake(reply)
    env = await open_env(flavour, server.address)
    try:
        frame = await env.render()
        assert frame.nbytes == big.nbytes
        await env.step(0)  # the bound holds again after the render
    finally:
        await env.close()


def test_the_bound_follows_the_spaces() -> None:
    box = gym.spaces.Box(0, 255, (210, 160, 3), np.uint8)
    fixed, variable = space_bound(gym.vector.utils.batch_space(box, 32))
    assert 32 * 210 * 160 * 3 <= fixed < 32 * 210 * 160 * 3 + 1024 and not variable
    text = gym.spaces.Dict({"t": gym.spaces.Text(10), "s": gym.spaces.Sequence(gym.spaces.Discrete(3))})
    assert space_bound(text)[1]  # the Sequence shares max_variable_size
    same = reply_bound(gym.vector.utils.batch_space(box, 4), num_envs=4, single_observation_space=box,
                       autoreset_mode="SameStep")
    next_ = reply_bound(gym.vector.utils.batch_space(box, 4), num_envs=4, single_observation_space=box,
                        autoreset_mode="NextStep")
    assert same.size - next_.size >= 4 * box.shape[0] * box.shape[1] * box.shape[2]  # info["final_obs"]


_RSS_CLIENT = textwrap.dedent("""
    import resource, sys
    from rlmesh import RemoteEnv
    from rlmesh.errors import ProtocolError

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
        raise AssertionError(field)

    env = RemoteEnv(sys.argv[1])
    env.step(0)  # a small, genuine step first: everything is imported and warm
    before = rss("VmRSS:")
    try:
        env.step(0)
        print("NO ERROR")
    except ProtocolError as exc:
        print("REFUSED", exc)
    print("GROWTH", rss("VmHWM:") - before)
    env.close()
""")


def test_a_hostile_gigabyte_reply_grows_host_memory_by_less_than_twice_the_bound(fake: Any) -> None:
    # The attack: a 1 GiB array as the observation, streamed by the server. The client
    # runs in its own process, so that its RSS is its own.
    bound = _cartpole_bound()
    size = (1 << 30) - (1 << 20)  # under the default max_frame_size (1 GiB), which alone let it in

    def reply(frame: Any) -> Any:
        rid = frame.request_id
        if rid == 2:
            return _step_reply_of_size(rid, 4096)
        tree = b'[{"__t__":[{"__nd__":0},1.0,false,false,{}]},[["|u1",[%d]]]]' % size
        tree += b" " * (-len(tree) % 8)
        head = HEADER.pack(b"RL", PROTOCOL_VERSION, MessageType.STEP, rid, len(tree), size) + tree
        chunk = bytes(1 << 20)
        return [(head, 0.0)] + [(chunk, 0.0)] * (size // len(chunk))

    server = fake(reply)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    out = subprocess.run([sys.executable, "-c", _RSS_CLIENT, server.address], capture_output=True, text=True,
                         timeout=120, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "REFUSED" in out.stdout and "max_info_size" in out.stdout, out.stdout
    growth = int(out.stdout.split("GROWTH")[1].split()[0])
    assert growth < 2 * bound, f"host RSS grew by {growth / 1e6:.0f} MB, over twice the {bound / 1e6:.0f} MB bound"
