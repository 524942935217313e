"""The one hot path (issue #25): parity over every shard count and path, and the data plane's seams.

Real servers on real Unix sockets (in-process threads); the in-process Gymnasium vector env is
the oracle. The hostile servers are :mod:`.test_data_plane`'s, speaking the real protocol.
"""

from __future__ import annotations

import asyncio
import copy
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import iterate

from rlmesh import AsyncRemoteVectorEnv, RemoteEnv, RemoteVectorEnv
from rlmesh.client import data_plane as client_data_plane
from rlmesh.errors import ConnectionClosedError, InvalidArgumentError, RLMeshError, RLMeshTimeoutError

from ..helpers import assert_same
from .test_data_plane import MODES, PATHS, Serve, _Mixed, _RawServer

SIZES = {1: [7], 2: [4, 3], 3: [3, 2, 2]}  # uneven lanes


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[Callable[..., _RawServer]]:
    servers: list[_RawServer] = []

    def start(reply: Callable[[Any], Any], **kwargs: Any) -> _RawServer:
        servers.append(_RawServer(str(tmp_path / f"hostile{len(servers)}.sock"), reply, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _vec(mode: AutoresetMode, n: int) -> Any:
    return gym.vector.SyncVectorEnv([_Mixed for _ in range(n)], autoreset_mode=mode)


def _shards(tmp_path: Path, serve: Serve, mode: AutoresetMode, k: int) -> list[str]:
    return [serve(_vec(mode, n), f"unix://{tmp_path}/{k}-{j}.sock") for j, n in enumerate(SIZES[k])]


def _masks(t: int, n: int, done: np.ndarray) -> np.ndarray:
    # Masks that spare whole shards, cut through one, and reset what ended.
    return [done | (np.arange(n) < 2), np.arange(n) >= n - 3, done][t % 3]


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", MODES, ids=[m.name for m in MODES])
def test_a_sync_vector_env_over_k_shards_is_bit_identical(tmp_path: Path, serve: Serve, k: int, path: str,
                                                          mode: AutoresetMode) -> None:
    # Dict observations (Box, MultiDiscrete, a Tuple, a Text) over 1, 2 and 3 shards of uneven
    # lanes, on the region and on the socket; masked resets that spare shards and cut through them.
    venv = RemoteVectorEnv(_shards(tmp_path, serve, mode, k), data_plane=path)
    local = _vec(mode, 7)
    try:
        actions = copy.deepcopy(local.action_space)
        actions.seed(3)
        assert_same(venv.reset(seed=11), local.reset(seed=11))
        kept = []
        for t in range(60):
            a = actions.sample()
            got, want = venv.step(a), local.step(a)
            assert_same(got, want, f"step {t}")
            kept.append((got, copy.deepcopy(got)))
            done = want[2] | want[3]
            mask = _masks(t, 7, done) if t % 5 == 4 else done if mode is AutoresetMode.DISABLED else done & False
            if mode is AutoresetMode.DISABLED:
                mask = mask | done  # ended lanes need a reset before their next step
            if mask.any():
                seed = [None, 100 + t][t % 2]
                assert_same(venv.reset(seed=seed, options={"reset_mask": mask}),
                            local.reset(seed=seed, options={"reset_mask": mask}), f"masked reset at {t}")
        for got, snapshot in kept:  # nothing returned changed afterwards
            assert_same(got, snapshot)
    finally:
        venv.close()


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("path", PATHS)
async def test_an_async_vector_env_over_k_shards_is_bit_identical(tmp_path: Path, serve: Serve, k: int,
                                                                  path: str) -> None:
    # step, a split step, a masked reset and send/recv of every lane, against the oracle.
    mode = AutoresetMode.SAME_STEP
    local = _vec(mode, 7)
    async with AsyncRemoteVectorEnv(_shards(tmp_path, serve, mode, k), data_plane=path) as venv:
        actions = copy.deepcopy(local.action_space)
        actions.seed(4)
        assert_same(await venv.reset(seed=2), local.reset(seed=2))
        for t in range(30):
            a = actions.sample()
            if t % 3 == 0:
                got = await venv.step(a)
            elif t % 3 == 1:
                await venv.step_async(a)
                got = await venv.step_wait()
            else:  # whole shards, in the order they finished: compared lane by lane
                await venv.send(a)
                obs, rewards, terms, truncs, info = await venv.recv()
                ids = info.pop("env_id")
                assert sorted(ids) == list(range(7))
                want = local.step(a)
                got_lanes, want_lanes = list(iterate(local.observation_space, obs)), list(iterate(local.observation_space, want[0]))
                for p, i in enumerate(ids):
                    assert_same(got_lanes[p], want_lanes[i], f"step {t} lane {i}")
                for k, value in enumerate((rewards, terms, truncs), 1):
                    assert_same(value, want[k][ids])
                continue
            assert_same(got, local.step(a), f"step {t}")
        mask = np.arange(7) % 2 == 0
        assert_same(await venv.reset(options={"reset_mask": mask}), local.reset(options={"reset_mask": mask}))


# --------------------------------------------------------------------------- the seams


def test_a_kept_observation_is_the_callers_copy_not_a_view_of_a_region(tmp_path: Path, serve: Serve) -> None:
    # A masked reset that spares shard 1 returns the observation the caller was given for its
    # lanes, whatever the server writes into its region meanwhile.
    def make() -> Any:
        return gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")

    venv = RemoteVectorEnv([serve(make(), f"unix://{tmp_path}/{j}.sock") for j in range(2)])
    local = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
    try:
        shard = venv._core.shards[1]
        assert shard.connection.data_plane.startswith("shared memory")
        assert_same(venv.reset(seed=0), local.reset(seed=0))
        action = np.array([0, 1, 1, 0])
        stepped, _, _, _, _ = venv.step(action)
        then = stepped.copy()
        local.step(action)
        for view in shard.connection.region._views:
            view[...] = 1234  # the server (hostile, or just its next step) rewrites its region
        mask = np.array([True, True, False, False])
        obs, _ = venv.reset(options={"reset_mask": mask})
        want, _ = local.reset(options={"reset_mask": mask})
        assert_same(obs[2:], then[2:])
        assert_same(obs, want)
    finally:
        venv.close()


def test_a_layout_too_big_to_count_in_int64_uses_the_socket(hostile: Any) -> None:
    # MultiBinary([2**32, 2**32]) is 2**64 bytes: counted in int64 it wrapped to a 0-byte leaf, and
    # the client raised a bare ValueError ("cannot reshape array of size 0").
    server = hostile(lambda frame: None, hello={"observation_space": gym.spaces.MultiBinary([2**32, 2**32])})
    env = RemoteEnv(server.address)
    try:
        note = env._core.connection.data_plane
        assert note.startswith("socket (the spaces' arrays need more than"), note
    finally:
        env.close()


def test_the_region_has_its_own_cap(hostile: Any) -> None:
    # A HELLO naming MultiBinary([2**29]) made the host create and fault in a 512 MiB region (the
    # reply cap, 1 GiB, was its only bound), outside any sandbox's memory limit.
    server = hostile(lambda frame: None, hello={"observation_space": gym.spaces.MultiBinary([2**29])})
    env = RemoteEnv(server.address)
    try:
        note = env._core.connection.data_plane
        assert note.startswith("socket (") and "max_region_size=67108864" in note, note
        assert env._core.connection.region is None
    finally:
        env.close()
    small = hostile(lambda frame: None, hello={"observation_space": gym.spaces.MultiBinary([1 << 20])})
    env = RemoteEnv(small.address, max_region_size=1 << 19)
    try:
        assert "max_region_size=524288" in env._core.connection.data_plane
    finally:
        env.close()


def test_a_server_that_stops_reading_after_ready_is_a_connection_error(hostile: Any) -> None:
    # The server shuts its read side, then answers MAP "ready": sending the descriptor fails. It
    # was a raw BrokenPipeError, which retry loops catching RLMeshError missed.
    server = hostile(lambda frame: None, before_ready=lambda sock: sock.shutdown(socket.SHUT_RD))
    with pytest.raises(ConnectionClosedError, match="handed over") as info:
        RemoteEnv(server.address)
    assert isinstance(info.value, RLMeshError)


def test_a_map_answer_later_than_the_handover_timeout_closes_the_connection(hostile: Any,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # The client gave up on MAP and sent RESET on the socket path, while the server, answering
    # late, took the RESET's first byte for the descriptor: "bad frame magic". Now the handover's
    # timeout closes the connection, and says so.
    monkeypatch.setattr(client_data_plane, "_MAP_TIMEOUT", 0.3)

    def late(size: int) -> dict[str, int]:
        time.sleep(1.0)
        return {"ready": size}

    server = hostile(lambda frame: None, answer_ready=late)
    start = time.monotonic()
    with pytest.raises(RLMeshTimeoutError, match="handover"):
        RemoteEnv(server.address, connect_timeout=30)
    assert time.monotonic() - start < 10


def test_options_fail_at_construction(tmp_path: Path) -> None:
    from rlmesh import AsyncRemoteEnv, AsyncSandboxEnv, AsyncSandboxVectorEnv
    from rlmesh.server.options import ServerOptions

    with pytest.raises(InvalidArgumentError, match="max_frame_size"):
        AsyncSandboxEnv("CartPole-v1", max_frame_size=10)  # it failed after the build and the start
    with pytest.raises(InvalidArgumentError, match="max_frame_size"):
        AsyncSandboxVectorEnv("CartPole-v1", num_envs=2, shards=2, max_frame_size=10)
    with pytest.raises(InvalidArgumentError, match="tls applies to TCP"):
        AsyncRemoteEnv(f"unix://{tmp_path}/x.sock", tls=True)  # it failed at connect
    with pytest.raises(InvalidArgumentError, match="max_region_size"):
        AsyncRemoteEnv(f"unix://{tmp_path}/x.sock", max_region_size=-1)
    for bad in (0, -1.0, "soon", None):
        with pytest.raises(InvalidArgumentError, match="hello_timeout"):
            ServerOptions.check(f"unix://{tmp_path}/x.sock", hello_timeout=bad)  # type: ignore[arg-type]


def test_a_sharded_env_s_argument_errors_are_rlmesh_errors_and_value_errors(tmp_path: Path, serve: Serve) -> None:
    def make() -> Any:
        return gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")

    venv = RemoteVectorEnv([serve(make(), f"unix://{tmp_path}/{j}.sock") for j in range(2)])
    try:
        venv.reset(seed=0)
        calls = [
            lambda: venv.reset(seed=[1, 2, 3]),
            lambda: venv.reset(options={"reset_mask": np.array([True, False])}),
            lambda: venv.step([0, 1, 1]),
            lambda: venv.set_attr("gravity", [1.0, 2.0, 3.0]),
        ]
        for call in calls:
            with pytest.raises(InvalidArgumentError) as info:
                call()
            assert isinstance(info.value, ValueError)
        assert venv.step(np.zeros(4, np.int64))[0].shape == (4, 4)  # still usable
    finally:
        venv.close()


async def test_an_async_step_cancelled_mid_gather_leaves_every_shard_usable(tmp_path: Path, serve: Serve) -> None:
    def make() -> Any:
        return gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")

    async with AsyncRemoteVectorEnv([serve(make(), f"unix://{tmp_path}/{j}.sock") for j in range(3)],
                                    request_timeout=10) as venv:
        await venv.reset(seed=0)
        for _ in range(5):
            task = asyncio.ensure_future(venv.step(np.ones(6, np.int64)))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        obs, *_ = await venv.step(np.zeros(6, np.int64))
        assert obs.shape == (6, 4)
