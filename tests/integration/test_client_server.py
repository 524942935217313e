"""Layer 2: the async client core and the sync shell against a real server over real sockets."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils import seeding

from rlmesh import AsyncRemoteEnv, AsyncRemoteVectorEnv, RemoteEnv, RemoteVectorEnv, _portal
from rlmesh.client import caller_thread
from rlmesh.client.caller_thread import read_replies
from rlmesh.client.transport import Reader
from rlmesh.errors import (
    ConnectError,
    ConnectionClosedError,
    EnvClosedError,
    InvalidActionError,
    InvalidArgumentError,
    RemoteEnvError,
    RLMeshError,
    RLMeshTimeoutError,
    ServerBusyError,
)
from rlmesh.protocol import PROTOCOL_VERSION, ClientHello, Connection, MessageType, SpecData, encode_message

from ..envs import BIG_OBS_ID, FAULTY_ID, KITCHEN_SINK_ID
from ..helpers import ServerThread, assert_same, assert_same_episodes, open_env

REPO = Path(__file__).resolve().parents[2]
Serve = Callable[..., str]


def hello_frame() -> bytes:
    return ClientHello(PROTOCOL_VERSION, "0" * 64, 1 << 20).encode(1)


def raw_socket(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(address.removeprefix("unix://"))
    return sock


def read_until_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def sample_actions(space: gym.spaces.Space[Any], seed: int, n: int) -> list[Any]:
    space.seed(seed)
    return [space.sample() for _ in range(n)]


# --------------------------------------------------------------------------- handshake and calls

async def test_handshake_mirrors_gym_make(serve: Serve, connect: Any) -> None:
    local = gym.make(KITCHEN_SINK_ID, render_mode="rgb_array", max_steps=4)
    env = await connect(serve(gym.make(KITCHEN_SINK_ID, render_mode="rgb_array", max_steps=4)))
    assert env.observation_space == local.observation_space
    assert env.action_space == local.action_space
    assert list(env.observation_space.spaces) == list(local.observation_space.spaces)
    assert env.metadata == local.metadata
    assert env.render_mode == "rgb_array"
    # What the server says about its spec is plain data; the spec the host uses is its own.
    assert local.spec is not None
    assert env.remote_spec == SpecData.from_spec(local.spec)
    assert env.remote_spec.kwargs == {"render_mode": "rgb_array", "max_steps": 4}
    assert env.spec.id == KITCHEN_SINK_ID and env.spec.entry_point == "rlmesh:RemoteEnv"
    assert env.spec.max_episode_steps == local.spec.max_episode_steps
    await env.reset(seed=7)
    assert env.np_random_seed == 7
    assert env.np_random.bit_generator.state == seeding.np_random(7)[0].bit_generator.state


async def test_reset_step_render_match_in_process(serve: Serve, connect: Any) -> None:
    local = gym.make(KITCHEN_SINK_ID, render_mode="rgb_array")
    env = await connect(serve(gym.make(KITCHEN_SINK_ID, render_mode="rgb_array")))
    assert_same(await env.reset(seed=3, options={"k": (1, 2)}), local.reset(seed=3, options={"k": (1, 2)}))
    for action in sample_actions(local.action_space, 0, 3):
        assert_same(await env.step(action), local.step(action))
        frame = await env.render()
        assert frame.dtype == np.uint8 and frame.ndim == 3
        assert_same(frame, local.render())


async def test_close_is_idempotent_and_context_managers_close(serve: Serve, flavour: str) -> None:
    address = serve(gym.make("CartPole-v1"))
    if flavour == "async":
        async with AsyncRemoteEnv(address) as env:
            await env.reset(seed=0)
        assert env.closed
        await env.close()
        with pytest.raises(EnvClosedError):
            await env.step(0)
        with pytest.raises(EnvClosedError):
            await env.connect()
        with pytest.raises(EnvClosedError, match="not connected"):
            await AsyncRemoteEnv(address).step(0)
    else:
        with RemoteEnv(address) as env:
            env.reset(seed=0)
        assert env.closed
        env.close()
        with pytest.raises(EnvClosedError):
            env.step(0)
    # The closed client freed the server: a new one is served at once.
    again = await open_env(flavour, address)
    try:
        assert again.observation_space == gym.make("CartPole-v1").observation_space
    finally:
        await again.close()


async def test_vector_context_managers(serve: Serve, flavour: str) -> None:
    address = serve(gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync"))
    if flavour == "async":
        async with AsyncRemoteVectorEnv(address) as venv:
            obs, _ = await venv.reset(seed=0)
        assert venv.closed
        await venv.close()
    else:
        with RemoteVectorEnv(address) as venv:
            obs, _ = venv.reset(seed=0)
        assert venv.closed
        venv.close()
    assert obs.shape == (2, 4)


async def test_single_and_vector_clients_refuse_the_other_kind(serve: Serve, flavour: str) -> None:
    address = serve(gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync"))
    with pytest.raises(InvalidArgumentError, match="RemoteVectorEnv"):
        await open_env(flavour, address)
    venv = await open_env(flavour, address, vector=True)
    assert venv.num_envs == 2
    await venv.close()


# --------------------------------------------------------------------------- errors

async def test_remote_env_error_carries_the_remote_traceback(serve: Serve, connect: Any) -> None:
    env = await connect(serve(gym.make(FAULTY_ID)))
    await env.reset(seed=0)
    await env.step(0)
    with pytest.raises(RemoteEnvError) as info:
        await env.step(1)
    err = info.value
    assert err.remote_type == "builtins.RuntimeError"
    assert err.remote_message == "boom: the action asked for it at t=1"
    assert "Traceback" in err.remote_traceback and "envs.py" in err.remote_traceback
    assert "raise RuntimeError" in err.remote_traceback
    assert "Remote traceback" in str(err)
    # The connection survives: a new episode starts.
    obs, _ = await env.reset(seed=1)
    assert obs.shape == (3,)
    assert (await env.step(0))[4] == {"t": 1}


INVALID_ACTIONS = {
    "out_of_range": ("CartPole-v1", 2, 0),
    "negative": ("CartPole-v1", -1, 0),
    "float_for_discrete": ("CartPole-v1", 1.0, 0),
    "numpy_float_for_discrete": ("CartPole-v1", np.float32(0), 0),
    "array_for_discrete": ("CartPole-v1", np.array([0, 1]), 0),
    "string": ("CartPole-v1", "left", 0),
    "wrong_shape": ("Pendulum-v1", np.zeros(2, np.float32), np.zeros(1, np.float32)),
    "box_out_of_bounds": ("Pendulum-v1", np.array([5.0], np.float32), np.zeros(1, np.float32)),
    "int_dtype_for_float_box_out_of_range": ("Pendulum-v1", np.array([9]), np.zeros(1, np.float32)),
    "missing_dict_key": (KITCHEN_SINK_ID, {"move": 0}, None),
}


@pytest.mark.parametrize(("env_id", "bad", "good"), INVALID_ACTIONS.values(), ids=INVALID_ACTIONS.keys())
async def test_strict_actions_are_checked_on_the_host(
    serve: Serve, connect: Any, env_id: str, bad: Any, good: Any
) -> None:
    space = gym.make(env_id).action_space
    env = await connect(serve(gym.make(env_id)), strict_actions=True)
    await env.reset(seed=0)
    with pytest.raises(InvalidActionError) as info:
        await env.step(bad)
    assert isinstance(info.value, ValueError)
    assert info.value.space == str(space)
    if not isinstance(bad, np.ndarray):
        assert len(str(info.value)) < 400  # bounded, whatever the action
    assert "action space" in str(info.value) and str(space) in str(info.value)
    if good is None:
        good = sample_actions(space, 0, 1)[0]
    assert len(await env.step(good)) == 5


@pytest.mark.parametrize(("env_id", "bad", "good"), INVALID_ACTIONS.values(), ids=INVALID_ACTIONS.keys())
async def test_the_env_judges_actions_as_in_process(
    serve: Serve, connect: Any, env_id: str, bad: Any, good: Any
) -> None:
    local = gym.make(env_id)
    local.reset(seed=0)
    try:
        expected: Any = local.step(bad)
    except Exception as exc:
        expected = exc
    env = await connect(serve(gym.make(env_id)))
    await env.reset(seed=0)
    if isinstance(expected, Exception):
        with pytest.raises(RemoteEnvError) as info:
            await env.step(bad)
        # Also the env's own exception type (a builtin here), so `except` clauses work unchanged.
        assert isinstance(info.value, type(expected)), (type(info.value).__mro__, type(expected))
        await env.reset(seed=0)
    else:
        assert_same(await env.step(bad), expected)  # e.g. Pendulum clips out-of-bounds torques
    if good is None:
        good = sample_actions(local.action_space, 0, 1)[0]
    assert len(await env.step(good)) == 5


async def test_second_client_is_told_busy(serve: Serve, connect: Any, flavour: str) -> None:
    address = serve(gym.make("CartPole-v1"))
    first = await connect(address)
    await first.reset(seed=0)
    for _ in range(5):  # every time, not just usually
        with pytest.raises(ServerBusyError, match="already serves a client") as info:
            await open_env(flavour, address)
        assert isinstance(info.value, ConnectionError)
    await first.step(0)  # the first client is unaffected
    await first.close()
    second = await connect(address)  # a cleanly closed client frees the server at once
    await second.reset(seed=0)


@pytest.mark.parametrize("how", ["half_a_frame", "request_then_hang_up", "during_a_slow_step"])
async def test_client_killed_mid_request_does_not_stop_the_server(serve: Serve, flavour: str, how: str) -> None:
    address = serve(gym.make(FAULTY_ID, step_delay=0.2))
    sock = raw_socket(address)
    sock.sendall(hello_frame())
    conn, msgs = Connection(), []
    while not msgs:
        msgs = conn.receive_data(sock.recv(65536))
    assert msgs[0].type is MessageType.HELLO
    step = b"".join(bytes(c) for c in encode_message(MessageType.STEP, 2, 2 if how == "during_a_slow_step" else 0))
    sock.sendall(step[: len(step) // 2] if how == "half_a_frame" else step)
    sock.close()
    env = await open_env(flavour, address)
    try:
        await env.reset(seed=0)
        assert (await env.step(0))[4] == {"t": 1}
    finally:
        await env.close()


GARBAGE = {
    "random_bytes": bytes(range(7, 200)) * 3,
    "http": b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl\r\n\r\n",
    "oversized_length": b"RL" + bytes([PROTOCOL_VERSION, MessageType.HELLO]) + (1).to_bytes(4, "little")
    + (8).to_bytes(4, "little") + (2**31).to_bytes(4, "little"),
    "wrong_version": b"RL" + bytes([PROTOCOL_VERSION + 1, MessageType.HELLO]) + bytes(12),
    "step_before_hello": b"".join(bytes(c) for c in encode_message(MessageType.STEP, 1, 0)),
    "hello_with_wrong_version": b"".join(bytes(c) for c in encode_message(MessageType.HELLO, 1, {"version": 99})),
}


@pytest.mark.parametrize("data", GARBAGE.values(), ids=GARBAGE.keys())
async def test_garbage_is_dropped_and_the_server_keeps_serving(serve: Serve, flavour: str, data: bytes) -> None:
    address = serve(gym.make("CartPole-v1"))
    sock = raw_socket(address)
    sock.sendall(data)
    reply = read_until_eof(sock)  # the server hangs up (else recv times out)
    sock.close()
    msgs = Connection().receive_data(reply)
    assert [(m.type, m.value()["kind"]) for m in msgs] == [(MessageType.ERROR, "protocol")]
    env = await open_env(flavour, address)
    try:
        obs, _ = await env.reset(seed=0)
        assert obs.shape == (4,)
    finally:
        await env.close()


async def test_connect_error_for_a_missing_socket(tmp_path: Path, flavour: str) -> None:
    for address in (f"unix://{tmp_path}/missing.sock", f"tcp://127.0.0.1:{free_port()}"):
        with pytest.raises(ConnectError, match="cannot connect") as info:
            await open_env(flavour, address)
        assert isinstance(info.value, ConnectionError)


async def test_request_timeout_with_a_slow_env(serve: Serve, connect: Any) -> None:
    env = await connect(serve(gym.make(FAULTY_ID, step_delay=0.5)), request_timeout=0.1)
    await env.reset(seed=0)
    with pytest.raises(RLMeshTimeoutError, match="request_timeout=0.1") as info:
        await env.step(2)  # sleeps 0.5 s
    assert isinstance(info.value, TimeoutError)
    await asyncio.sleep(0.6)
    # The late reply is dropped; the next reply is matched to its own request
    # (and shows that the slow step did happen on the server).
    assert (await env.step(0))[4] == {"t": 2}


async def test_pipelined_requests_get_their_own_replies(serve: Serve) -> None:
    # Only the async core can have several requests in flight.
    async with AsyncRemoteEnv(serve(gym.make(FAULTY_ID))) as env:
        await env.reset(seed=0)
        results = await asyncio.gather(*(env.step(0) for _ in range(8)), env.reset(seed=0), env.step(0))
        assert [r[4]["t"] for r in results[:8]] == list(range(1, 9))
        assert results[9][4] == {"t": 1}


async def test_unencodable_action_is_an_argument_error(serve: Serve, connect: Any) -> None:
    env = await connect(serve(gym.make(KITCHEN_SINK_ID)))
    await env.reset(seed=0)
    nested: Any = 0
    for _ in range(300):
        nested = [nested]
    for bad in ("\ud800", nested):
        with pytest.raises(InvalidArgumentError, match="cannot encode"):
            await env.step(bad)
    action = sample_actions(gym.make(KITCHEN_SINK_ID).action_space, 0, 1)[0]
    assert len(await env.step(action)) == 5


async def test_frames_larger_than_a_socket_read(serve: Serve, connect: Any) -> None:
    local = gym.make(BIG_OBS_ID)
    env = await connect(serve(gym.make(BIG_OBS_ID)))
    assert env.observation_space == local.observation_space
    assert_same(env.observation_space.high, local.observation_space.high)
    assert_same(await env.reset(seed=1), local.reset(seed=1))
    obs = np.asarray(local.observation_space.high)  # a 400 KB action-sized payload the other way
    with pytest.raises(TypeError):
        local.step(obs)
    with pytest.raises(RemoteEnvError) as info:
        await env.step(obs)
    assert isinstance(info.value, TypeError)
    for a in (0, 1, 1):
        assert_same(await env.step(a), local.step(a))


async def test_connect_timeout_when_nobody_answers(tmp_path: Path, flavour: str) -> None:
    # A socket that listens but never accepts: connect() succeeds, the handshake never ends.
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(tmp_path / "silent.sock"))
    silent.listen(1)
    try:
        address = f"unix://{tmp_path}/silent.sock"
        with pytest.raises(RLMeshTimeoutError, match="connect_timeout=0.2") as info:
            if flavour == "async":
                env = AsyncRemoteEnv(address, connect_timeout=0.2)
                try:
                    await env.connect()
                finally:
                    await env.close()
            else:
                RemoteEnv(address, connect_timeout=0.2)
        assert isinstance(info.value, TimeoutError)
    finally:
        silent.close()


async def test_client_sees_the_server_stop(tmp_path: Path, flavour: str) -> None:
    st = ServerThread(gym.make("CartPole-v1"), f"unix://{tmp_path}/s.sock").start()
    try:
        env = await open_env(flavour, st.address)
        await env.reset(seed=0)
    finally:
        st.stop()
    assert not (tmp_path / "s.sock").exists()
    with pytest.raises(ConnectionClosedError):
        await env.step(0)
    await env.close()


def test_sync_shell_on_the_portal_loop_raises_instead_of_deadlocking(serve: Serve) -> None:
    address = serve(gym.make("CartPole-v1"))
    env = RemoteEnv(address)
    try:
        env.reset(seed=0)

        async def step_inside() -> Any:
            return env.step(0)

        async def make_inside() -> Any:
            return RemoteEnv(address)

        portal = _portal.get_portal()
        for func in (step_inside, make_inside):
            with pytest.raises(RLMeshError, match="inside rlmesh's own event loop"):
                portal.start_task_soon(func).result(timeout=10)
        assert len(env.step(0)) == 5  # still usable from a normal thread
    finally:
        env.close()


async def test_tcp_address_with_port_zero_and_an_env_factory(serve: Serve, connect: Any) -> None:
    made: list[gym.Env[Any, Any]] = []
    address = serve(lambda: made.append(gym.make("CartPole-v1")) or made[-1], "tcp://127.0.0.1:0", insecure=True)
    assert len(made) == 1
    assert address.startswith("tcp://127.0.0.1:") and not address.endswith(":0")
    env = await connect(address)
    local = gym.make("CartPole-v1")
    assert_same(await env.reset(seed=5), local.reset(seed=5))
    assert_same(await env.step(1), local.step(1))


# --------------------------------------------------------------------------- `python -m rlmesh.serve`

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def run_serve(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[str], str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> tuple[subprocess.Popen[str], str]:
        log = open(tmp_path / f"serve-{len(procs)}.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlmesh.serve", *args], cwd=REPO, stdout=subprocess.PIPE,
            stderr=log, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        log.close()
        procs.append(proc)
        watchdog = threading.Timer(60, proc.kill)  # a hung server cannot hang the test run
        watchdog.start()
        try:
            line = proc.stdout.readline() if proc.stdout else ""
        finally:
            watchdog.cancel()
        assert line, f"no readiness line; server log:\n{(tmp_path / f'serve-{len(procs) - 1}.log').read_text()}"
        return proc, line.rstrip("\n")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def stop_with_sigterm(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(20)


def test_serve_subprocess_over_unix_socket(run_serve: Any, tmp_path: Path) -> None:
    sock = tmp_path / "cartpole.sock"
    proc, line = run_serve("CartPole-v1", "--address", f"unix://{sock}")
    assert line == f"rlmesh-server ready on unix://{sock}"
    local = gym.make("CartPole-v1")
    with RemoteEnv(f"unix://{sock}") as env:
        assert env.spec is not None and env.spec.id == "CartPole-v1"
        assert_same(env.reset(seed=11), local.reset(seed=11))
        for action in sample_actions(local.action_space, 1, 20):
            assert_same(env.step(action), local.step(action))
    assert stop_with_sigterm(proc) == 0
    assert not sock.exists()


def test_serve_subprocess_over_tcp_with_module_source_and_kwargs(run_serve: Any) -> None:
    port = free_port()
    proc, line = run_serve(
        f"tests.envs:{KITCHEN_SINK_ID}", "--address", f"tcp://127.0.0.1:{port}", "--insecure",
        "--kwargs-json", '{"render_mode": "rgb_array", "max_steps": 3}',
    )
    assert line == f"rlmesh-server ready on tcp://127.0.0.1:{port}"
    local = gym.make(KITCHEN_SINK_ID, render_mode="rgb_array", max_steps=3)
    with RemoteEnv(f"127.0.0.1:{port}") as env:
        assert local.spec is not None and env.remote_spec == SpecData.from_spec(local.spec)
        assert_same(env.reset(seed=2), local.reset(seed=2))
        for action in sample_actions(local.action_space, 2, 3):
            assert_same(env.step(action), local.step(action))
            assert_same(env.render(), local.render())
    assert stop_with_sigterm(proc) == 0


def test_serve_subprocess_vector_env(run_serve: Any, tmp_path: Path) -> None:
    sock = tmp_path / "vec.sock"
    proc, _ = run_serve("CartPole-v1", "--address", f"unix://{sock}", "--num-envs", "3",
                        "--autoreset-mode", "same_step")
    with RemoteVectorEnv(f"unix://{sock}") as venv:
        assert venv.num_envs == 3
        assert venv.metadata["autoreset_mode"] is gym.vector.AutoresetMode.SAME_STEP
        obs, _ = venv.reset(seed=[1, 2, 3])
        assert obs.shape == (3, 4)
    assert stop_with_sigterm(proc) == 0
    assert not sock.exists()


def test_serve_subprocess_reports_a_bad_source(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rlmesh.serve", "no_such_module_xyz:make", "--address", f"unix://{tmp_path}/x.sock"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 3
    assert "no_such_module_xyz" in result.stderr
    assert result.stdout == ""


async def test_a_silent_connection_holds_no_slot(serve: Serve, flavour: str) -> None:
    # A connection that says nothing (a port probe, a stuck client) holds neither the loop
    # nor the slot: the next client is served at once.
    address = serve(gym.make("CartPole-v1"))
    sock = raw_socket(address)
    await asyncio.sleep(0.05)
    env = await open_env(flavour, address)
    await env.reset(seed=0)
    await env.close()
    sock.close()


async def test_a_peer_that_never_says_hello_loses_the_slot(tmp_path: Path) -> None:
    st = ServerThread(gym.make("CartPole-v1"), f"unix://{tmp_path}/s.sock", hello_timeout=0.3).start()
    try:
        mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        mute.connect(str(tmp_path / "s.sock"))
        mute.settimeout(10)
        received = b""
        while chunk := mute.recv(4096):  # the server drops it: an error frame, then EOF
            received += chunk
        mute.close()
        assert b"no HELLO (and authentication) within 0.3s" in received
        env = AsyncRemoteEnv(st.address)
        async with env:
            await env.reset(seed=0)
    finally:
        st.stop()


def test_serve_applies_wrappers_in_order(run_serve: Any, tmp_path: Path) -> None:
    sock = tmp_path / "w.sock"
    wrappers = '[["gymnasium.wrappers:TimeLimit", {"max_episode_steps": 3}], ["gymnasium.wrappers:FlattenObservation", {}]]'
    proc, _ = run_serve(f"tests.envs:{KITCHEN_SINK_ID}", "--address", f"unix://{sock}", "--wrappers-json", wrappers)
    local = gym.wrappers.FlattenObservation(gym.wrappers.TimeLimit(gym.make(KITCHEN_SINK_ID), max_episode_steps=3))
    with RemoteEnv(f"unix://{sock}") as env:
        assert env.observation_space == local.observation_space  # described after wrapping
        assert_same(env.reset(seed=1), local.reset(seed=1))
        for action in sample_actions(local.action_space, 3, 3):
            assert_same(env.step(action), local.step(action))
    assert stop_with_sigterm(proc) == 0


def test_wrappers_are_checked_for_form_on_the_host() -> None:
    from rlmesh.numpy import AsyncSandboxEnv

    for bad in ("gymnasium.wrappers:TimeLimit", ["not a path"], [("a:B", "kwargs")], [("a:B", {"x": object()})]):
        with pytest.raises(InvalidArgumentError, match="wrapper"):
            AsyncSandboxEnv("CartPole-v1", wrappers=bad)
    env = AsyncSandboxEnv("CartPole-v1", wrappers=["a.b:C", ("d:E", {"k": 1})])
    assert env.wrappers == [["a.b:C", {}], ["d:E", {"k": 1}]]


def test_env_server_runs_in_a_thread_with_ready_and_a_thread_safe_stop(tmp_path: Path) -> None:
    from rlmesh import EnvServer

    server = EnvServer(lambda: gym.make("CartPole-v1"), f"unix://{tmp_path}/t.sock", ready_message=None)
    thread = threading.Thread(target=server.serve)
    thread.start()
    try:
        assert server.ready.wait(timeout=30)
        with RemoteEnv(server.address) as env:
            assert env.reset(seed=0)[0].shape == (4,)
    finally:
        server.stop()
        thread.join(timeout=30)
    assert not thread.is_alive() and not server.ready.is_set()
    assert not (tmp_path / "t.sock").exists()


def test_a_stop_before_the_server_starts_is_not_lost(tmp_path: Path) -> None:
    # The usual clean-up: stop() in a finally after ready.wait() timed out, or right after start().
    from rlmesh import EnvServer

    server = EnvServer(lambda: gym.make("CartPole-v1"), f"unix://{tmp_path}/early.sock", ready_message=None)
    server.stop()  # nothing runs yet
    thread = threading.Thread(target=server.serve)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and not (tmp_path / "early.sock").exists()
    # And it can serve again afterwards, stopped from another thread while running.
    thread = threading.Thread(target=server.serve)
    thread.start()
    assert server.ready.wait(timeout=30)
    server.stop()
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_metadata_is_the_remote_env_s_and_a_shell_s_own_once_assigned(tmp_path: Path) -> None:
    # gym.make judges a render mode by its creator's class metadata: the shells' class metadata is a
    # dict (Gymnasium 1.1-1.3 require one) that admits every mode, so the remote env judges.
    # Assigning it (as some user code does) keeps the core's.
    for cls in (RemoteEnv, RemoteVectorEnv):
        assert isinstance(cls.metadata, dict) and "rgb_array" in cls.metadata["render_modes"]
    st = ServerThread(gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync"),
                      f"unix://{tmp_path}/m.sock").start()
    try:
        with RemoteVectorEnv(st.address) as envs:
            assert envs.metadata["autoreset_mode"] is gym.vector.AutoresetMode.NEXT_STEP
            envs.metadata = {"render_modes": []}
            assert envs.metadata == {"render_modes": []}
            envs.reset(seed=0)
            for _ in range(30):  # through autoresets, which read the core's autoreset mode
                envs.step(np.ones(2, dtype=np.int64))
    finally:
        st.stop()


class _EchoActionEnv(gym.Env[np.ndarray[Any, Any], np.ndarray[Any, Any]]):
    """Returns the action it was given as its observation (a big action: 56 KB)."""

    action_space = spaces.Box(-1.0, 1.0, (14000,), np.float32)
    observation_space = spaces.Box(-1.0, 1.0, (14000,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        return np.zeros(14000, np.float32), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        return np.array(action, np.float32), 0.0, False, False, {}


def test_sync_requests_written_from_the_caller_s_thread_survive_partial_writes(serve: Serve) -> None:
    # The sync classes write a request on the socket from the caller's thread; what the socket
    # does not take at once is queued to the loop. With a tiny send buffer most requests are
    # split, and each must still arrive whole and in order.
    address = serve(_EchoActionEnv())
    with RemoteEnv(address) as env:
        env.reset(seed=0)
        p = env._core.connection.protocol
        assert p.direct is not None
        p.direct.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        flushes = []
        flush = p.flush_backlog
        p.flush_backlog = lambda: (flushes.append(len(p.backlog)), flush())  # type: ignore[method-assign]
        rng = np.random.default_rng(0)
        for _ in range(100):
            action = rng.uniform(-1, 1, 14000).astype(np.float32)
            obs, *_ = env.step(action)
            assert np.array_equal(obs, action)
        assert len(flushes) > 50  # the split path was taken
    assert p.direct is None  # closed with the connection


def test_a_loop_write_queued_before_a_split_direct_write_goes_after_it(serve: Serve) -> None:
    # The loop is busy; a request is queued for it to write; then this thread writes a request
    # the socket takes only part of. The loop's write must wait for the rest of that frame
    # (written first, it would land inside it and break the stream).
    address = serve(_EchoActionEnv())
    with RemoteEnv(address) as env:
        env.reset(seed=0)
        core = env._core
        p = core.connection.protocol
        assert p.direct is not None
        p.direct.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        x = np.full(14000, 0.25, np.float32)
        y = np.full(14000, -0.5, np.float32)
        for _ in range(5):
            busy = threading.Event()
            p.loop.call_soon_threadsafe(lambda busy=busy: (busy.set(), time.sleep(0.2)))  # hold the loop
            assert busy.wait(10)
            wake_x, wake_y = caller_thread._Wake(1), caller_thread._Wake(1)
            slot_x, slot_y = caller_thread.ThreadSlot(wake_x), caller_thread.ThreadSlot(wake_y)
            p.loop.call_soon_threadsafe(caller_thread._submit_all, [(p, slot_x, MessageType.STEP, x)])
            sent = caller_thread.send_from_thread(p, MessageType.STEP, y, slot_y)
            assert sent
            assert p.backlog  # split: the rest waits for the loop
            if sent == 2:  # the loop is not reading: this thread reads its reply
                read_replies([(p, slot_y)], 30)
            assert wake_y.wait(30) and wake_x.wait(30)
            assert np.array_equal(core.decode_step(slot_y.result())[0], y)
            assert np.array_equal(core.decode_step(slot_x.result())[0], x)



def test_a_forked_child_using_its_parent_s_env_gets_a_clear_error(serve: Serve) -> None:
    # The child has no loop thread to serve the parent's connection (and may have forked while
    # a parent thread held its send lock): an error at once, and the parent's env unharmed.
    address = serve(gym.make("CartPole-v1"))
    with RemoteEnv(address) as env:
        env.reset(seed=0)
        env.step(0)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, and leave without running the parent's clean-up
            try:
                env.step(1)
                os.write(w, b"no error")
            except EnvClosedError as exc:
                os.write(w, f"EnvClosedError: {exc}".encode())
            except BaseException as exc:
                os.write(w, repr(exc).encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as pipe:
            said = pipe.read().decode()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert said.startswith("EnvClosedError") and "os.fork()" in said, said
        env.step(1)  # the parent's connection still works


def test_sync_envs_stepped_from_many_threads_at_once(tmp_path: Path) -> None:
    # An evaluation harness's thread pool: each thread steps its own env (requests written from
    # the threads, replies all through the one loop thread), and one env shared by two threads
    # (its requests serialised by the connection's send lock). Every result is the in-process one.
    from concurrent.futures import ThreadPoolExecutor

    servers = [ServerThread(gym.make("CartPole-v1"), f"unix://{tmp_path}/{i}.sock").start() for i in range(6)]
    shared_server = ServerThread(gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync"),
                                 f"unix://{tmp_path}/shared.sock").start()
    try:
        def own(i: int) -> int:
            with RemoteEnv(servers[i].address) as env:
                assert_same_episodes(env, gym.make("CartPole-v1"), 300, seed=i)
            return i

        with RemoteVectorEnv(shared_server.address) as shared, ThreadPoolExecutor(8) as pool:
            shared.reset(seed=0)

            def hammer(k: int) -> int:
                for _ in range(200):
                    obs, rewards, *_ = shared.step(np.array([k % 2] * 4))
                    assert obs.shape == (4, 4) and rewards.shape == (4,)
                return k

            jobs = [pool.submit(own, i) for i in range(6)] + [pool.submit(hammer, k) for k in range(2)]
            assert sorted(j.result(timeout=120) for j in jobs) == [0, 0, 1, 1, 2, 3, 4, 5]
    finally:
        shared_server.stop()
        for st in servers:
            st.stop()


def test_a_sync_caller_reads_its_own_reply_once_the_loop_is_idle(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    address = serve(gym.make("CartPole-v1"))
    with RemoteEnv(address, request_timeout=10) as env:
        ref = gym.make("CartPole-v1")
        assert_same(env.reset(seed=1), ref.reset(seed=1))
        p = env._core.connection.protocol

        def idle() -> bool:  # the loop stops reading right after it delivered the last reply
            deadline = time.monotonic() + 5
            while not (p.reader is Reader.NONE and p.paused) and time.monotonic() < deadline:
                time.sleep(0.001)
            return p.reader is Reader.NONE and p.paused

        assert idle()  # idle: the loop stopped reading
        reads = []
        real = caller_thread.read_replies
        monkeypatch.setattr(caller_thread, "read_replies", lambda *a: (reads.append(1), real(*a)))
        for t in range(5):
            assert_same(env.step(t % 2), ref.step(t % 2))
        assert len(reads) == 5 and p.reader is Reader.NONE
        # A request of the loop's own (the spaces' description goes through the portal) takes
        # reading back, then leaves it idle again.
        assert env.get_wrapper_attr("spec").id == "CartPole-v1"
        assert idle()
        assert_same(env.step(0), ref.step(0))


def test_an_interrupted_sharded_step_leaves_every_connection_usable(tmp_path: Path) -> None:
    # Ctrl-C lands while the second shard's request is sent (the first is sent, and this thread
    # would read its reply): reading goes back to the loop, and nothing hangs afterwards.
    a = ServerThread(gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync"), f"unix://{tmp_path}/a.sock").start()
    b = ServerThread(gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync"), f"unix://{tmp_path}/b.sock").start()
    try:
        with RemoteVectorEnv([a.address, b.address], request_timeout=10) as envs:
            envs.reset(seed=0)
            envs.step(np.zeros(4, np.int64))
            first, second = (shard.connection for shard in envs._core.shards)
            real = caller_thread.send_from_thread

            def interrupted(p: Any, *args: Any) -> int:
                if p is second.protocol:
                    raise KeyboardInterrupt
                return real(p, *args)

            caller_thread.send_from_thread = interrupted  # type: ignore[assignment]
            try:
                with pytest.raises(KeyboardInterrupt):
                    envs.step(np.zeros(4, np.int64))
            finally:
                caller_thread.send_from_thread = real
            assert first.protocol.reader is not Reader.THREAD
            # The first shard's reply to the interrupted step is read (and dropped as nobody's)
            # by the loop; every later request, sync or through the loop, is answered.
            assert envs.get_attr("np_random_seed") is not None
            for _ in range(3):
                obs, *_ = envs.step(np.ones(4, np.int64))
                assert obs.shape == (4, 4)
    finally:
        a.stop()
        b.stop()


def test_an_interrupted_read_drops_the_connection_instead_of_hanging(serve: Serve) -> None:
    address = serve(gym.make("CartPole-v1"))
    with RemoteEnv(address, request_timeout=10) as env:
        env.reset(seed=0)
        env.step(0)
        p = env._core.connection.protocol

        def interrupted(frames: Any, *, on_loop: bool) -> None:
            del p.dispatch  # once
            raise KeyboardInterrupt

        p.dispatch = interrupted  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            env.step(1)
        # Bytes were read and not dispatched: the stream cannot go on. The next request says
        # so at once, rather than waiting for a reply that was consumed.
        start = time.monotonic()
        with pytest.raises(ConnectionClosedError, match="interrupted"):
            env.step(1)
        assert time.monotonic() - start < 5


def test_a_connection_error_sent_while_the_client_is_idle_is_raised_by_the_next_step(serve: Serve) -> None:
    # The server drops a silent client (idle timeout) with a connection-level ERROR while the
    # loop is not reading: the next step's own read finds it.
    address = serve(gym.make("CartPole-v1"), "tcp://127.0.0.1:0", insecure=True, idle_timeout=0.3)
    with RemoteEnv(address, request_timeout=10) as env:
        env.reset(seed=0)
        env.step(0)
        time.sleep(1.0)
        start = time.monotonic()
        with pytest.raises(RLMeshError):
            env.step(1)
        assert time.monotonic() - start < 5


def test_gymnasium_make_register_and_make_vec_take_a_remote_env(tmp_path: Path) -> None:
    # Gymnasium 1.1-1.3's make() reads its creator's class metadata and raised InvalidMetadata for a
    # property ("Expect the environment metadata to be dict"); every supported version must take it.
    st = ServerThread(lambda: gym.make("CartPole-v1"), f"unix://{tmp_path}/r.sock").start()
    gym.register("rlmesh-test/RemoteCartPole-v0", entry_point="rlmesh:RemoteEnv",
                 kwargs={"address": st.address}, max_episode_steps=7)
    try:
        env = gym.make("rlmesh-test/RemoteCartPole-v0")
        try:
            assert isinstance(env.unwrapped, RemoteEnv)
            assert_same_episodes(env, gym.make("CartPole-v1", max_episode_steps=7), steps=20, seed=3)
        finally:
            env.close()
        envs = gym.make_vec("rlmesh-test/RemoteCartPole-v0", num_envs=1, vectorization_mode="sync")
        try:
            obs, _ = envs.reset(seed=0)
            assert obs.shape == (1, 4)
            assert envs.step(np.zeros(1, dtype=np.int64))[0].shape == (1, 4)
        finally:
            envs.close()
    finally:
        gym.registry.pop("rlmesh-test/RemoteCartPole-v0")
        st.stop()


async def test_a_crowded_server_answers_every_client_it_cannot_serve_with_server_busy(serve: Serve) -> None:
    # 200 clients at once against a one-client server: more than MAX_PENDING are in their handshake at
    # once, and the oldest are evicted. Each client must learn the truth: ServerBusyError (retry later),
    # never "the server process may have exited" while the server is fine.
    address = serve(gym.make("CartPole-v1"), "tcp://127.0.0.1:0", insecure=True)

    async def one() -> str:
        env = AsyncRemoteEnv(address, connect_timeout=30)
        try:
            await env.connect()
        except ServerBusyError:
            return "busy"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        await env.close()
        return "served"

    with anyio.fail_after(60):
        outcomes = await asyncio.gather(*(one() for _ in range(200)))
    assert {o for o in outcomes if o not in ("busy", "served")} == set()
    assert "served" in outcomes
    env = AsyncRemoteEnv(address)  # and the server still serves
    await env.connect()
    await env.close()
