"""The shared-memory data plane (issue #17): parity on both paths, and a hostile server.

Real servers on real Unix sockets (and TCP, which must keep the socket path); the in-process
Gymnasium env is the oracle. The hostile servers here speak the real protocol, map the real
region the client hands them, and then misbehave.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import gc
import mmap
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from rlmesh import RemoteEnv, RemoteVectorEnv
from rlmesh.errors import EnvClosedError, ProtocolError
from rlmesh.protocol import Connection, ErrorBody, MessageType, encode_message
from rlmesh.protocol.data_plane import FEATURE, PROBE_SIZE, Layout

from ..envs import BIG_OBS_ID, KITCHEN_SINK_ID
from ..helpers import assert_same, cartpole_hello

Serve = Callable[..., str]
PATHS = ("auto", "socket")
MODES = [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED]


def _core(env: Any) -> Any:
    return env._core


def _plane(env: Any) -> str:
    return str(_core(env).connection.data_plane)


def _expect(path: str, plane: str) -> None:
    assert plane.startswith("shared memory" if path == "auto" else "socket"), plane


# --------------------------------------------------------------------------- parity on both paths

SINGLE = {
    "CartPole": ("CartPole-v1", {}, 6),
    "Pendulum": ("Pendulum-v1", {}, 2),
    "KitchenSink": (KITCHEN_SINK_ID, {}, 8),
    "BigObs": (BIG_OBS_ID, {}, 2),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("env_id", "kwargs", "episodes"), SINGLE.values(), ids=SINGLE.keys())
def test_single_env_is_bit_identical_on_both_paths(serve: Serve, path: str, env_id: str, kwargs: dict[str, Any],
                                                   episodes: int) -> None:
    local = gym.make(env_id, **kwargs)
    env = RemoteEnv(serve(gym.make(env_id, **kwargs)), data_plane=path)
    try:
        _expect(path, _plane(env))
        actions = copy.deepcopy(local.action_space)
        actions.seed(3)
        kept: list[tuple[Any, Any]] = []
        for episode in range(episodes):
            seed = [42, None, 7][episode % 3]
            got = env.reset(seed=seed)
            assert_same(got, local.reset(seed=seed))
            kept.append((got[0], copy.deepcopy(got[0])))
            while True:
                action = actions.sample()
                want = local.step(action)
                got = env.step(action)
                assert_same(got, want)
                kept.append((got[0], copy.deepcopy(got[0])))
                if want[2] or want[3]:
                    break
        for obs, snapshot in kept:  # what the caller kept never changed afterwards
            assert_same(obs, snapshot)
    finally:
        env.close()


def _make_vec(mode: AutoresetMode, env_id: str = "CartPole-v1", n: int = 4) -> Any:
    return gym.make_vec(env_id, num_envs=n, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode})


def _vector_parity(venv: Any, local: Any, mode: AutoresetMode, steps: int = 300) -> None:
    n = local.num_envs
    actions = copy.deepcopy(local.action_space)
    actions.seed(5)
    assert_same(venv.reset(seed=9), local.reset(seed=9))
    ends = masked = 0
    kept = []
    for t in range(steps):
        action = actions.sample()
        want = local.step(action)
        got = venv.step(action)
        assert_same(got, want, f"step {t}")
        kept.append((got[0], copy.deepcopy(got[0]), got[1], got[1].copy()))
        done = want[2] | want[3]
        ends += int(done.sum())
        if mode is AutoresetMode.DISABLED and done.any():
            seed = [None, 1000 + t, [2000 + t + i for i in range(n)]][masked % 3]
            assert_same(venv.reset(seed=seed, options={"reset_mask": done.copy()}),
                        local.reset(seed=seed, options={"reset_mask": done.copy()}), f"masked reset at {t}")
            masked += 1
    assert ends >= 10
    for obs, snapshot, rewards, rewards_then in kept:
        assert_same(obs, snapshot)
        assert_same(rewards, rewards_then)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", MODES, ids=[m.name for m in MODES])
def test_vector_env_is_bit_identical_on_both_paths(serve: Serve, path: str, mode: AutoresetMode) -> None:
    venv = RemoteVectorEnv(serve(_make_vec(mode)), data_plane=path)
    try:
        _expect(path, _plane(venv))
        _vector_parity(venv, _make_vec(mode), mode)
    finally:
        venv.close()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", MODES, ids=[m.name for m in MODES])
def test_sharded_vector_env_is_bit_identical_on_both_paths(tmp_path: Path, serve: Serve, path: str,
                                                          mode: AutoresetMode) -> None:
    # Lanes 0-2 and 3-5 on two servers: each shard maps only its own region.
    a = serve(_make_vec(mode, n=3), f"unix://{tmp_path}/a.sock")
    b = serve(_make_vec(mode, n=3), f"unix://{tmp_path}/b.sock")
    venv = RemoteVectorEnv([a, b], data_plane=path)
    try:
        for shard in _core(venv).shards:
            _expect(path, shard.connection.data_plane)
            if path == "auto":
                assert shard.connection.region.size == Layout(shard.observation_space, 3).size
        _vector_parity(venv, _make_vec(mode, n=6), mode)
    finally:
        venv.close()


class _Mixed(gym.Env[dict[str, Any], int]):
    """Dict observations of every kind: fixed-shape leaves and a Text, with infos."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Dict({
            "pos": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
            "label": gym.spaces.Text(4, charset="abc"),
            "grid": gym.spaces.MultiDiscrete([3, 4]),
            "pair": gym.spaces.Tuple((gym.spaces.Discrete(3), gym.spaces.MultiBinary(3))),
        })
        self.action_space = gym.spaces.Discrete(2)
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        return self._obs(), {"t": 0}

    def _obs(self) -> dict[str, Any]:
        self.observation_space.seed(int(self.np_random.integers(1 << 30)))  # drawn from the env's seed
        return self.observation_space.sample() | {"pos": self.np_random.uniform(-1, 1, 2).astype(np.float32)}

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        self._t += 1
        return self._obs(), float(action), self._t >= 7, False, {"t": self._t, "x": np.float32(self._t)}


def _mixed_vec(mode: AutoresetMode) -> Any:
    return gym.vector.SyncVectorEnv([_Mixed for _ in range(3)], autoreset_mode=mode)


@pytest.mark.parametrize("mode", MODES, ids=[m.name for m in MODES])
def test_vector_dict_observations_go_leaf_by_leaf(serve: Serve, mode: AutoresetMode) -> None:
    # Box, MultiDiscrete and MultiBinary leaves in the region; the Text lanes (a Tuple of Texts)
    # and the Discrete batch's neighbours' infos on the socket.
    venv = RemoteVectorEnv(serve(_mixed_vec(mode)))
    try:
        layout = _core(venv).connection.region.layout
        paths = {leaf.path for leaf in layout.leaves}
        assert paths >= {("pos",), ("grid",), ("pair", 0), ("pair", 1), ("reward",)}, paths
        assert not any(leaf.path[0] == "label" for leaf in layout.leaves)
        _vector_parity(venv, _mixed_vec(mode), mode, steps=300)
    finally:
        venv.close()


def test_a_tcp_shard_keeps_the_socket(tmp_path: Path, serve: Serve) -> None:
    mode = AutoresetMode.NEXT_STEP
    token = "a-token-for-the-tcp-shard-here"
    a = serve(_make_vec(mode, n=2), f"unix://{tmp_path}/a.sock", token=token)
    b = serve(_make_vec(mode, n=2), "tcp://127.0.0.1:0", token=token)
    venv = RemoteVectorEnv([a, b], token=token)
    try:
        planes = [shard.connection.data_plane for shard in _core(venv).shards]
        assert planes[0].startswith("shared memory") and planes[1] == "socket (not a Unix socket)", planes
        _vector_parity(venv, _make_vec(mode, n=4), mode, steps=100)
    finally:
        venv.close()


def test_an_older_server_is_served_over_the_socket(tmp_path: Path) -> None:
    # A server that names no features (rlmesh before the data plane) is never sent a MAP.
    def reply(frame: Any) -> bytes:
        assert frame.type is MessageType.STEP, frame.type
        return encode_message(MessageType.STEP, frame.request_id, (np.zeros(4, np.float32), 1.0, False, False, {}))

    server = _RawServer(str(tmp_path / "old.sock"), reply, features=())
    env = RemoteEnv(server.address)
    try:
        assert env._core.connection.data_plane.startswith("socket (the server offers no shared memory")
        assert env.step(0)[1] == 1.0
    finally:
        env.close()
        server.close()


# --------------------------------------------------------------------------- a hostile server


class _RawServer:
    """A server written for a test: a genuine CartPole handshake (naming ``features``), the real
    MAP exchange (it maps the client's region), then ``reply(frame)`` for every request; ``misbehave``
    is called with the socket, the region and the received descriptor once mapped, ``before_ready``
    with the socket just before it says ready."""

    def __init__(self, path: str, reply: Callable[[Any], Any], *, features: tuple[str, ...] = (FEATURE,),
                 misbehave: Callable[[socket.socket, mmap.mmap, int], None] | None = None,
                 answer_ready: Callable[[int], Any] | None = None, decline: bool = False,
                 hello: dict[str, Any] | None = None,
                 before_ready: Callable[[socket.socket], None] | None = None) -> None:
        self.address = f"unix://{path}"
        self.region: mmap.mmap | None = None
        self.sock: socket.socket | None = None
        self.errors: list[BaseException] = []
        self._reply, self._features, self._misbehave = reply, features, misbehave
        self._answer_ready = answer_ready or (lambda size: {"ready": size})
        self._decline, self._hello, self._before_ready = decline, hello or {}, before_ready
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(1)
        self._listener.settimeout(30)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        conn = Connection()
        probe = b""
        self.sock = sock
        try:
            with sock:
                while True:
                    data = sock.recv(1 << 16)
                    if not data:
                        return
                    for frame in conn.receive_data(data):
                        rid = frame.request_id
                        if frame.type is MessageType.HELLO:
                            sock.sendall(cartpole_hello(rid, features=self._features, **self._hello))
                        elif frame.type is MessageType.CLOSE:
                            sock.sendall(encode_message(MessageType.CLOSE, rid, None))
                            return
                        elif frame.type is MessageType.MAP and self._decline:
                            sock.sendall(ErrorBody("bad_request", "InvalidArgumentError",
                                                   "no shared region: declined by the test").encode(rid))
                        elif frame.type is MessageType.MAP and "size" in frame.value():
                            body = frame.value()
                            probe = bytes.fromhex(body["probe"])
                            if self._before_ready is not None:
                                self._before_ready(sock)
                            sock.sendall(encode_message(MessageType.MAP, rid, self._answer_ready(body["size"])))
                            _, fds, _, _ = socket.recv_fds(sock, 1, 4)
                            self.region = mmap.mmap(fds[0], body["size"])
                            self.region[PROBE_SIZE:2 * PROBE_SIZE] = probe[::-1]
                            if self._misbehave is not None:
                                self._misbehave(sock, self.region, fds[0])
                            for fd in fds:
                                os.close(fd)
                        elif frame.type is MessageType.MAP:
                            sock.sendall(encode_message(MessageType.MAP, rid, {"mapped": frame.value()["check"],
                                                                                "probe": probe.hex()}))
                        else:
                            out = self._reply(frame)
                            if out is not None:
                                sock.sendall(out)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def close(self) -> None:
        self._listener.close()
        self._thread.join(10)


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[Callable[..., _RawServer]]:
    servers: list[_RawServer] = []

    def start(reply: Callable[[Any], Any], **kwargs: Any) -> _RawServer:
        server = _RawServer(str(tmp_path / f"raw{len(servers)}.sock"), reply, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _cartpole_writer(server_box: list[_RawServer]) -> Callable[[Any], bytes]:
    """Answers each STEP_SHARED by writing obs [t, t, t, t] into the region (None in the frame)."""
    count = [0]

    def reply(frame: Any) -> bytes:
        count[0] += 1
        region = server_box[0].region
        assert region is not None and frame.type is MessageType.STEP_SHARED
        np.frombuffer(region, np.float32, 4, 2 * PROBE_SIZE + (-2 * PROBE_SIZE % 64))[:] = count[0]
        return encode_message(frame.type, frame.request_id, (None, 1.0, False, False, {}))

    return reply


def test_a_server_that_rewrites_its_region_cannot_change_what_was_returned(raw: Any) -> None:
    box: list[_RawServer] = []
    stop = threading.Event()

    def scribble(sock: socket.socket, region: mmap.mmap, fd: int) -> None:
        def loop() -> None:  # during and after every step, until the test ends
            noise = np.frombuffer(region, np.uint8)
            while not stop.is_set():
                noise[64:] = np.random.randint(0, 256, noise.size - 64, dtype=np.uint8)
        threading.Thread(target=loop, daemon=True).start()

    box.append(raw(_cartpole_writer(box), misbehave=scribble))
    env = RemoteEnv(box[0].address)
    try:
        assert _plane(env).startswith("shared memory")
        kept = []
        for _ in range(200):
            obs = env.step(0)[0]
            assert type(obs) is np.ndarray and obs.dtype == np.float32 and obs.shape == (4,)
            kept.append((obs, obs.copy()))
        time.sleep(0.05)
        for obs, snapshot in kept:  # wrong numbers at worst; never changed after the return
            assert obs.tobytes() == snapshot.tobytes()
    finally:
        stop.set()
        env.close()


def test_the_seals_refuse_to_grow_or_shrink_the_region(raw: Any) -> None:
    box: list[_RawServer] = []
    refused: list[int] = []

    def resize(sock: socket.socket, region: mmap.mmap, fd: int) -> None:
        size = os.fstat(fd).st_size
        for new in (size * 2, size // 2, 0):
            try:
                os.ftruncate(fd, new)
            except OSError as exc:
                refused.append(exc.errno)
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)  # no more seals: F_SEAL_SEAL
            refused.append(0)

    box.append(raw(_cartpole_writer(box), misbehave=resize))
    env = RemoteEnv(box[0].address)
    try:
        assert _plane(env).startswith("shared memory")
        assert refused == [errno.EPERM] * 3
        assert env.step(0)[0].tolist() == [1.0] * 4  # the host's mapping is whole
    finally:
        env.close()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_descriptors_sent_by_a_server_are_never_taken(raw: Any, tmp_path: Path) -> None:
    box: list[_RawServer] = []
    writer = _cartpole_writer(box)
    forged = os.open(tmp_path, os.O_RDONLY)

    def reply(frame: Any) -> Any:
        data = writer(frame)
        # The reply's first byte carries descriptors (a forged region, and another): the client
        # reads with recv, so the kernel drops them.
        sock = box[0].sock
        assert sock is not None
        socket.send_fds(sock, [data[:1]], [forged, forged])
        sock.sendall(data[1:])
        return None

    box.append(raw(reply))
    env = RemoteEnv(box[0].address)
    try:
        env.step(0)
        before = _fds()
        for t in range(50):
            assert env.step(0)[0].tolist() == [t + 2.0] * 4
        assert _fds() == before
    finally:
        env.close()
        os.close(forged)


@pytest.mark.parametrize("answer", [lambda size: {"ready": size + 4096}, lambda size: {"ready": size, "offset": 8}])
def test_a_server_that_announces_another_size_is_refused(raw: Any, answer: Callable[[int], Any]) -> None:
    server = raw(lambda frame: None, answer_ready=answer)
    with pytest.raises(ProtocolError, match="region") as err:
        RemoteEnv(server.address)
    assert "connection was closed" in str(err.value)


# --------------------------------------------------------------------------- a hostile client, a real server

def _offer(sock: socket.socket, conn: Connection, rid: int, body: dict[str, Any]) -> Any:
    sock.sendall(encode_message(MessageType.MAP, rid, body))
    while True:
        frames = conn.receive_data(sock.recv(1 << 16))
        if frames:
            return frames[0]


def _hello(sock: socket.socket, conn: Connection) -> Any:
    from rlmesh.protocol import PROTOCOL_VERSION, ClientHello
    from rlmesh.protocol import auth as wire_auth

    sock.sendall(ClientHello(PROTOCOL_VERSION, wire_auth.new_nonce(), 1 << 20).encode(1))
    while True:
        frames = conn.receive_data(sock.recv(1 << 16))
        if frames:
            return frames[0]


def _memfd(size: int, seals: int) -> int:
    fd = os.memfd_create("test", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def _pipe_reader() -> int:
    reader, writer = os.pipe()
    os.close(writer)
    return reader


ALL_SEALS = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
FORGED = {
    "unsealed memfd": lambda size: [_memfd(size, 0)],
    "a memfd that may still grow": lambda size: [_memfd(size, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)],
    "another size": lambda size: [_memfd(size * 2, ALL_SEALS)],
    "a pipe": lambda size: [_pipe_reader()],
    "two descriptors": lambda size: [_memfd(size, ALL_SEALS), _memfd(size, ALL_SEALS)],
}


@pytest.mark.parametrize("forge", FORGED.values(), ids=FORGED.keys())
def test_the_server_declines_a_forged_region_and_keeps_serving(serve: Serve, forge: Callable[[int], list[int]]) -> None:
    address = serve(gym.make("CartPole-v1"))
    layout = Layout(gym.make("CartPole-v1").observation_space, None)
    size = layout.size
    probe = os.urandom(PROBE_SIZE)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(address.removeprefix("unix://"))
    conn = Connection()
    with sock:
        hello = _hello(sock, conn)
        assert FEATURE in hello.tree["features"]
        ready = _offer(sock, conn, 2, {"size": size, "probe": probe.hex(), "layout": layout.fingerprint()})
        assert ready.type is MessageType.MAP and ready.value() == {"ready": size}
        fds = forge(size)
        for fd in fds:
            with contextlib.suppress(OSError):  # the region would hold the probe, were it genuine
                os.pwrite(fd, probe, 0)
        socket.send_fds(sock, [b"M"], fds)
        for fd in fds:
            os.close(fd)
        checked = _offer(sock, conn, 3, {"check": size})
        assert checked.type is MessageType.ERROR
        assert "no shared region" in checked.value()["message"]
        # The socket path goes on.
        sock.sendall(encode_message(MessageType.RESET, 4, {"seed": 0, "options": None}))
        while not (frames := conn.receive_data(sock.recv(1 << 16))):
            pass
        assert frames[0].type is MessageType.RESET and frames[0].value()[0].shape == (4,)


# --------------------------------------------------------------------------- lifecycle

def _maps() -> int:
    with open("/proc/self/maps") as f:
        return sum("rlmesh-data-plane" in line for line in f)


def test_200_open_close_cycles_leave_no_descriptor_or_mapping(serve: Serve) -> None:
    address = serve(lambda: gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync"))
    env = RemoteVectorEnv(address)
    env.reset(seed=0)
    env.close()
    gc.collect()
    fds, maps = _fds(), _maps()
    for i in range(200):
        env = RemoteVectorEnv(address)
        assert _plane(env).startswith("shared memory")
        env.reset(seed=i)
        env.step(np.array([0, 1]))
        env.close()
    gc.collect()
    deadline = time.monotonic() + 10  # the server thread closes its side as each client goes
    while (_fds(), _maps()) != (fds, maps) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (_fds(), _maps()) == (fds, maps)


def test_a_forked_child_cannot_use_the_parents_env_and_the_parent_goes_on(serve: Serve) -> None:
    local = gym.make("CartPole-v1")
    env = RemoteEnv(serve(gym.make("CartPole-v1")))
    try:
        assert _plane(env).startswith("shared memory")
        assert_same(env.reset(seed=3), local.reset(seed=3))
        pid = os.fork()
        if pid == 0:  # the child: a clear error, never a wait or the parent's data
            code = 1
            try:
                env.step(0)
            except EnvClosedError:
                code = 0
            except BaseException:
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        for t in range(60):
            want = local.step(t % 2)
            assert_same(env.step(t % 2), want)
            if want[2] or want[3]:
                assert_same(env.reset(), local.reset())
    finally:
        env.close()


def test_a_sync_sharded_step_waits_on_all_shards_with_one_poll_set(tmp_path: Path, serve: Serve,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The caller's thread gathers K replies itself: one poll set per step, each connection
    # registered once (not a new set, re-registering every shard, after each reply).
    import rlmesh.client.caller_thread as connection

    made: list[int] = []
    registered: list[int] = []
    real_poll = connection.select.poll

    class CountingPoll:
        def __init__(self) -> None:
            made.append(1)
            self._poll = real_poll()

        def register(self, fd: Any, mask: int) -> None:
            registered.append(1)
            self._poll.register(fd, mask)

        def unregister(self, fd: Any) -> None:
            self._poll.unregister(fd)

        def poll(self, timeout: Any = None) -> Any:
            return self._poll.poll(timeout)

    shards = 6
    addresses = [serve(_make_vec(AutoresetMode.NEXT_STEP, n=2), f"unix://{tmp_path}/{j}.sock") for j in range(shards)]
    local = _make_vec(AutoresetMode.NEXT_STEP, n=2 * shards)
    venv = RemoteVectorEnv(addresses)
    try:
        assert_same(venv.reset(seed=1), local.reset(seed=1))
        monkeypatch.setattr(connection.select, "poll", CountingPoll)
        steps = 50
        for t in range(steps):
            action = np.full(2 * shards, t % 2)
            assert_same(venv.step(action), local.step(action))
        monkeypatch.undo()
        assert len(made) <= steps, f"{len(made)} poll sets for {steps} steps"
        assert len(registered) <= steps * shards, f"{len(registered)} registrations for {steps} steps of {shards} shards"
    finally:
        venv.close()


async def test_an_async_sharded_env_gathers_through_the_regions(tmp_path: Path, serve: Serve) -> None:
    from rlmesh import AsyncRemoteVectorEnv

    mode = AutoresetMode.SAME_STEP
    a = serve(_make_vec(mode, n=3), f"unix://{tmp_path}/a.sock")
    b = serve(_make_vec(mode, n=3), f"unix://{tmp_path}/b.sock")
    local = _make_vec(mode, n=6)
    async with AsyncRemoteVectorEnv([a, b]) as venv:
        assert all(shard.connection.data_plane.startswith("shared memory") for shard in venv.shards)
        actions = copy.deepcopy(local.action_space)
        actions.seed(2)
        assert_same(await venv.reset(seed=3), local.reset(seed=3))
        kept = []
        for t in range(150):
            action = actions.sample()
            got = await venv.step(action)
            assert_same(got, local.step(action), f"step {t}")
            kept.append((got[0], got[0].copy()))
            if t % 3 == 0:  # the split step takes the same gather
                await venv.step_async(action)
                got = await venv.step_wait()
                assert_same(got, local.step(action), f"split step {t}")
        for obs, snapshot in kept:
            assert_same(obs, snapshot)


# --------------------------------------------------------------------------- found by review


def test_a_region_is_never_bigger_than_a_reply_may_be(raw: Any) -> None:
    # The region is sized from the server's HELLO: a MultiBinary announced at 2**40 elements cost
    # nothing to send and made the host map (then copy) a TiB. Past max_frame_size: the socket.
    server = raw(lambda frame: None, hello={"observation_space": gym.spaces.MultiBinary([1 << 20, 1 << 20])})
    env = RemoteEnv(server.address, max_frame_size=1 << 20)
    try:
        note = env._core.connection.data_plane
        assert note.startswith("socket (the spaces' arrays need") and "max_frame_size=1048576" in note, note
    finally:
        env.close()


def test_dict_observations_in_insertion_order_fill_the_right_keys(serve: Serve) -> None:
    # The env's Dict keeps insertion order (b before a); the client's, rebuilt from the handshake,
    # is sorted. Both sides must place the keys alike, or each key reads another's array.
    import collections

    class Ordered(gym.Env[Any, Any]):
        observation_space = gym.spaces.Dict(collections.OrderedDict(
            [("b", gym.spaces.Box(-9, 9, (4,), np.float32)), ("a", gym.spaces.Box(-9, 9, (2,), np.float64))]))
        action_space = gym.spaces.Discrete(2)

        def _obs(self) -> dict[str, Any]:
            return {"b": np.full(4, 2.0, np.float32), "a": np.full(2, float(self.t), np.float64)}

        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
            self.t = 0
            return self._obs(), {}

        def step(self, action: Any) -> Any:
            self.t += 1
            return self._obs(), 0.0, False, False, {}

    address = serve(Ordered)
    env = RemoteEnv(address)
    try:
        assert env._core.connection.data_plane.startswith("shared memory")
        ref = Ordered()
        assert_same(env.reset(seed=0), ref.reset(seed=0))
        for _ in range(3):
            assert_same(env.step(0), ref.step(0))
    finally:
        env.close()


def test_a_declined_offer_leaves_no_descriptor_behind(raw: Any) -> None:
    def fds() -> int:  # this process's memfd descriptors (the raw servers' listeners live on)
        out = 0
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                out += os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")
        return out

    def reply(frame: Any) -> bytes:
        return encode_message(frame.type, frame.request_id, (np.zeros(4, np.float32), {}))

    for _ in range(3):  # warm up whatever opens once
        env = RemoteEnv(raw(reply, decline=True).address)
        env.close()
    before = fds()
    for _ in range(20):
        env = RemoteEnv(raw(reply, decline=True).address)
        assert env._core.connection.data_plane.startswith("socket (the server declined"), env._core.connection.data_plane
        env.close()
    gc.collect()
    assert fds() == before


def test_a_malformed_map_answer_is_a_protocol_error(raw: Any) -> None:
    server = raw(lambda frame: None, answer_ready=lambda size: {"ready": np.arange(3)})
    with pytest.raises(ProtocolError, match="answered a"):
        RemoteEnv(server.address)


def test_an_env_with_too_many_arrays_for_a_region_is_served_over_the_socket(serve: Serve) -> None:
    space = gym.spaces.Dict({f"k{i:04d}": gym.spaces.Box(0, 1, (1,), np.float32) for i in range(5000)})

    class Wide(gym.Env[Any, Any]):
        observation_space = space
        action_space = gym.spaces.Discrete(2)

        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
            return {k: np.zeros(1, np.float32) for k in space.spaces}, {}

        def step(self, action: Any) -> Any:
            return {k: np.ones(1, np.float32) for k in space.spaces}, 0.0, False, False, {}

    env = RemoteEnv(serve(Wide))
    try:
        assert env._core.connection.data_plane.startswith("socket"), env._core.connection.data_plane
        assert env.step(0)[0]["k4999"][0] == 1.0 if env.reset()[0]["k0000"][0] == 0.0 else False
    finally:
        env.close()


def test_a_refused_handshake_unmaps_its_region_at_once(serve: Serve) -> None:
    # A single-env class pointed at a vector server: the connection is refused after its region was
    # handed over. The region must go with the connection, not whenever the garbage collector runs.
    from rlmesh.errors import InvalidArgumentError

    address = serve(gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync"))

    def mapped() -> int:
        with open("/proc/self/maps") as f:
            return sum("rlmesh-data-plane" in line for line in f)

    gc.disable()
    try:
        before = mapped()
        for _ in range(5):
            with pytest.raises(InvalidArgumentError):
                RemoteEnv(address)
        # The server, a thread of this process, unmaps its side once it sees the connection end.
        deadline = time.monotonic() + 10
        while mapped() > before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert mapped() == before
    finally:
        gc.enable()
