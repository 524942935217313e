"""Layer 2: the wire contract against hostile peers, authentication, TLS and connection lifecycle.

Every test here sends traffic to loopback or Unix sockets only.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import orjson
import pytest

from rlmesh import AsyncRemoteEnv, AsyncRemoteVectorEnv, RemoteEnv
from rlmesh.errors import (
    AuthenticationError,
    ConnectError,
    ConnectionClosedError,
    InvalidArgumentError,
    ProtocolError,
    RemoteEnvError,
    RLMeshError,
    RLMeshTimeoutError,
    ServerBusyError,
)
from rlmesh.protocol import (
    PROTOCOL_VERSION,
    AuthChallenge,
    AuthProof,
    ClientHello,
    Connection,
    ErrorBody,
    MessageType,
    encode_message,
)
from rlmesh.protocol import auth as wire_auth
from rlmesh.protocol.framing import HEADER
from rlmesh.server import EnvServer

from ..envs import FAULTY_ID
from ..helpers import FakeServer, ServerThread, cartpole_hello, open_env

REPO = Path(__file__).resolve().parents[2]
TOKEN = "a-test-token-of-sufficient-length"
Serve = Callable[..., str]


def cartpole_step_reply(rid: int) -> bytes:
    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    return encode_message(MessageType.STEP, rid, env.step(0))


def raw_frame(tree: Any, meta: list[Any], payload: bytes, mtype: int = MessageType.STEP, rid: int = 2) -> bytes:
    js = orjson.dumps([tree, meta])
    js += b" " * (-len(js) % 8)
    return HEADER.pack(b"RL", PROTOCOL_VERSION, mtype, rid, len(js), len(payload)) + js + payload


@pytest.fixture
def fake(tmp_path: Path) -> Any:
    servers: list[FakeServer] = []

    def start(reply: Callable[[Any], Any], hello: Callable[[int], bytes] | None = None) -> FakeServer:
        server = FakeServer(str(tmp_path / f"fake{len(servers)}.sock"), reply, hello)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


# --------------------------------------------------------------------------- a hostile server

async def _step_against(fake: Any, flavour: str, reply: Callable[[Any], Any], **kwargs: Any) -> BaseException:
    server = fake(reply)
    env = await open_env(flavour, server.address, **kwargs)
    try:
        with pytest.raises(RLMeshError) as info:
            await env.step(0)
        return info.value
    finally:
        await env.close()


async def test_amplified_reply_is_refused_with_bounded_memory(fake: Any, flavour: str) -> None:
    # One 1 MiB buffer referenced 2000 times: 2 GB once decoded, if the decoder let it.
    def reply(frame: Any) -> bytes:
        return raw_frame([{"__by__": 0}] * 2000, [["|u1", [1 << 20]]], bytes(1 << 20), rid=frame.request_id)

    tracemalloc.start()
    try:
        err = await _step_against(fake, flavour, reply)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert type(err) is ProtocolError and "referenced twice" in str(err) and "connection was closed" in str(err)
    assert peak < 16 << 20, f"peak {peak / 1e6:.0f} MB"


async def test_oversized_frame_is_refused_on_its_header(fake: Any, flavour: str) -> None:
    def reply(frame: Any) -> bytes:
        return HEADER.pack(b"RL", PROTOCOL_VERSION, MessageType.STEP, frame.request_id, 8, 1 << 30)

    err = await _step_against(fake, flavour, reply, max_frame_size=1 << 20)
    assert isinstance(err, ProtocolError) and "exceeds the maximum of 1048576" in str(err)


async def test_slow_drip_is_bounded_by_the_request_timeout(fake: Any, flavour: str) -> None:
    frame_bytes = cartpole_step_reply(2)

    def reply(frame: Any) -> list[tuple[bytes, float]]:
        return [(frame_bytes[i : i + 1], 0.05) for i in range(len(frame_bytes))]

    err = await _step_against(fake, flavour, reply, request_timeout=0.3)
    assert isinstance(err, RLMeshTimeoutError)


async def test_reply_to_a_request_never_made(fake: Any, flavour: str) -> None:
    err = await _step_against(fake, flavour, lambda frame: cartpole_step_reply(frame.request_id + 1000))
    assert isinstance(err, ProtocolError) and "never made" in str(err)


MALFORMED_REPLIES = {
    "bare_number": lambda rid: encode_message(MessageType.STEP, rid, 5),
    "four_tuple": lambda rid: encode_message(MessageType.STEP, rid, (np.zeros(4), 1.0, False, {})),
    "info_not_a_dict": lambda rid: encode_message(MessageType.STEP, rid, (np.zeros(4), 1.0, False, False, [])),
    "reward_a_string": lambda rid: encode_message(MessageType.STEP, rid, (np.zeros(4), "1", False, False, {})),
    "wrong_reply_type": lambda rid: encode_message(MessageType.RESET, rid, (np.zeros(4), {})),
    "malformed_error": lambda rid: encode_message(MessageType.ERROR, rid, [1, 2]),
    "unknown_error_kind": lambda rid: encode_message(MessageType.ERROR, rid, {"kind": "shell", "message": "x"}),
    "bad_tag": lambda rid: raw_frame({"__t__": 5}, [], b"", rid=rid),
}


@pytest.mark.parametrize("make", MALFORMED_REPLIES.values(), ids=MALFORMED_REPLIES.keys())
async def test_malformed_replies_are_protocol_errors(fake: Any, flavour: str, make: Callable[[int], bytes]) -> None:
    err = await _step_against(fake, flavour, lambda frame: make(frame.request_id))
    assert type(err) is ProtocolError, repr(err)


def _forged_hello(rid: int) -> bytes:
    from rlmesh.protocol import SpecData

    forged = SpecData(id="CartPole-v1", entry_point="os:system", vector_entry_point="subprocess:run",
                      max_episode_steps=500, kwargs={"command": "touch /tmp/rlmesh-pwned"})
    return cartpole_hello(rid, spec=forged)


async def test_a_forged_spec_never_runs_on_the_host(fake: Any, tmp_path: Path) -> None:
    server = fake(lambda frame: None, hello=_forged_hello)
    async with AsyncRemoteEnv(server.address) as env:
        assert env.remote_spec is not None and env.remote_spec.entry_point == "os:system"  # plain data
        spec = env.spec
        assert spec is not None and spec.entry_point == "rlmesh:RemoteEnv"
        assert spec.kwargs == {"address": server.address}
        assert spec.id == "CartPole-v1" and spec.max_episode_steps == 500


@pytest.mark.parametrize(
    "overrides",
    [{"render_mode": 5}, {"metadata": [1]}, {"autoreset_mode": "x" * 500}],
    ids=["render_mode", "metadata", "long_string"],
)
async def test_malformed_handshakes_are_protocol_errors(fake: Any, overrides: dict[str, Any]) -> None:
    def hello(rid: int) -> bytes:
        from rlmesh.protocol import MessageType as MT

        good = Connection().receive_data(cartpole_hello(rid))[0]
        tree = {**good.tree, **overrides}
        return raw_frame(tree, [[a.dtype.str, list(a.shape)] for a in good.arrays],
                         b"".join(a.tobytes() + bytes(-a.nbytes % 8) for a in good.arrays), mtype=MT.HELLO, rid=rid)

    server = fake(lambda frame: None, hello=hello)
    with pytest.raises(ProtocolError, match="malformed handshake"):
        await AsyncRemoteEnv(server.address).connect()


# --------------------------------------------------------------------------- a hostile client

def _hello() -> bytes:
    return ClientHello(PROTOCOL_VERSION, wire_auth.new_nonce(), 1 << 20).encode(1)


def _talk(address: str, data: bytes, after_hello: bytes | None = None) -> list[Any]:
    """Send ``data`` (and, once the server's HELLO came, ``after_hello``); return all it sent back."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(address.removeprefix("unix://"))
    conn, frames = Connection(), []
    with sock:
        sock.sendall(data)
        if after_hello is not None:
            frames.append(_read_frame(sock, conn))
            sock.sendall(after_hello)
        while chunk := sock.recv(1 << 16):
            frames += conn.receive_data(chunk)
    return frames


async def test_amplified_action_is_dropped_by_the_server(serve: Serve, flavour: str) -> None:
    address = serve(gym.make("CartPole-v1"))
    bomb = raw_frame([{"__by__": 0}] * 2000, [["|u1", [1 << 20]]], bytes(1 << 20))
    tracemalloc.start()
    try:
        frames = await asyncio.to_thread(_talk, address, _hello(), bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [f.type for f in frames] == [MessageType.HELLO, MessageType.ERROR]
    assert frames[1].value()["kind"] == "protocol" and "referenced twice" in frames[1].value()["message"]
    assert peak < 16 << 20, f"peak {peak / 1e6:.0f} MB"
    env = await open_env(flavour, address)  # the server goes on serving
    await env.reset(seed=0)
    await env.close()


async def test_before_hello_a_peer_may_send_only_a_small_frame(serve: Serve) -> None:
    address = serve(gym.make("CartPole-v1"))
    header = HEADER.pack(b"RL", PROTOCOL_VERSION, MessageType.HELLO, 1, 8, 100 << 20)
    frames = await asyncio.to_thread(_talk, address, header)
    assert frames[0].value()["kind"] == "protocol" and "exceeds the maximum of 65536" in frames[0].value()["message"]


async def test_a_malformed_request_keeps_the_connection(serve: Serve) -> None:
    address = serve(gym.make(FAULTY_ID))
    async with AsyncRemoteEnv(address) as env:
        conn = env.connection
        for body in ({"seed": "x", "options": None}, {"seed": 1, "options": [1]}):
            frame = await conn.request(MessageType.RESET, body)
            with pytest.raises(InvalidArgumentError, match="reset"):
                conn.unwrap(frame, MessageType.RESET, lambda f: f.value())
        await env.reset(seed=0)  # still usable


# --------------------------------------------------------------------------- remote exception types

async def test_remote_exceptions_keep_builtin_and_gymnasium_types(serve: Serve, connect: Any) -> None:
    env = await connect(serve(gym.make("CartPole-v1")))
    with pytest.raises(gym.error.ResetNeeded) as info:  # OrderEnforcing: step before reset
        await env.step(0)
    assert isinstance(info.value, RemoteEnvError) and info.value.remote_type == "gymnasium.error.ResetNeeded"
    await env.reset(seed=0)
    with pytest.raises(AssertionError):  # CartPole asserts its action
        await env.step(7)
    with pytest.raises(AttributeError):
        await env._call(env.env.get_wrapper_attr, "no_such_attribute")


def test_remote_error_classes_are_only_builtin_or_gymnasium() -> None:
    from rlmesh.protocol.faults import remote_error_class

    assert issubclass(remote_error_class("builtins.KeyError"), KeyError)
    assert issubclass(remote_error_class("builtins.UnicodeDecodeError"), UnicodeError)  # nearest usable base
    assert issubclass(remote_error_class("gymnasium.error.NameNotFound"), gym.error.NameNotFound)
    for name in ("os.system", "builtins.SystemExit", "builtins.KeyboardInterrupt", "subprocess.CalledProcessError",
                 "builtins.print", "gymnasium.error.logger", "rlmesh.errors.ServerBusyError", ""):
        assert remote_error_class(name) is RemoteEnvError, name
    err = remote_error_class("builtins.KeyError")("builtins.KeyError", "'k'", "tb")
    assert str(err).startswith("builtins.KeyError: 'k'")


@pytest.mark.parametrize("message, traceback, fix", [
    ("libGL.so.1: cannot open shared object file: No such file or directory", "", 'system_packages=["libgl1"]'),
    ("libglib-2.0.so.0: cannot open shared object file", "", 'system_packages=["libglib2.0-0"]'),
    ("'NoneType' object has no attribute 'glGetError'",
     'File "/usr/lib/python3/mujoco/osmesa/__init__.py", line 34\n    from OpenGL import GL', "pass gl='osmesa'"),
    ("'NoneType' object has no attribute 'glGetError'",
     'File "/x/OpenGL/platform/egl.py", line 2\n', "pass gl='egl'"),
    ("'NoneType' object has no attribute 'eglQueryString'", "", "pass gl='egl'"),  # once no note: 'egl', not 'gl'
    ("Cannot initialize a EGL device display. This likely means that your EGL driver does not support the "
     "PLATFORM_DEVICE extension", "", '"libgl1-mesa-dri"'),
    ("libweird.so.3: cannot open shared object file", "", 'probably "libweird3"'),
    ("('Unable to load OpenGL library', 'libGL.so.1: cannot open shared object file: No such file or directory', "
     "'libGL.so.1', None)", "", 'system_packages=["libgl1"]'),                       # PyOpenGL's own words
    ('OSError: "libEGL.so.1: cannot open shared object file"', "", 'system_packages=["libegl1"]'),
    ("x: cannot open shared object file; libSM.so.6: cannot open shared object file", "", 'system_packages=["libsm6"]'),
    ("libweird.so.3: cannot open shared object file", "", "apt-file search"),
    ("'NoneType' object has no attribute 'glGetError'", "no OpenGL involved... but OpenGL named", "apt-file search"),
])
def test_a_missing_shared_library_note_names_the_debian_package(message: str, traceback: str, fix: str) -> None:
    from rlmesh.protocol.faults import ErrorBody, exception_for_error
    from rlmesh.sandbox.library_hints import add_sandbox_notes

    err = exception_for_error(ErrorBody("env", "builtins.ImportError", message, traceback))
    assert not getattr(err, "__notes__", None)  # the protocol knows nothing of Debian: a sandbox adds the note
    assert isinstance(err, RemoteEnvError)
    add_sandbox_notes(err)
    assert fix in "".join(err.__notes__)


@pytest.mark.parametrize("message", [
    ".so" * ((64 << 10) // 3),                                       # a backtracking pattern's worst case
    "a.so.1" * ((64 << 10) // 6),
    "a" * (64 << 10) + ": cannot open shared object file",
    ("lib.so: cannot open shared object file " * 2000)[: 64 << 10],
    "could not " * ((64 << 10) // 10),
])
def test_a_hostile_error_message_is_searched_in_bounded_time(message: str, tmp_path: Path) -> None:
    # The env writes the message (64 KiB) and the traceback (256 KiB); the client looks for a missing
    # library in both. A quadratic search took ~40 s on 64 KiB: this must be immediate. (In a
    # subprocess: a regex search holds the GIL, so a thread could not be timed out.)
    (tmp_path / "message.txt").write_text(message)
    code = (
        "import pathlib, sys\n"
        "from rlmesh.sandbox.library_hints import missing_library_note\n"
        "m = pathlib.Path(sys.argv[1]).read_text()\n"
        "missing_library_note(m, (m * 4)[-4000:])\n"
        "missing_library_note(m * 4, m)\n"
    )
    # a hang detector (linear: milliseconds, plus the interpreter's start), not a timing assertion
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "message.txt")], check=True, timeout=20)


def test_an_env_error_without_a_missing_library_has_no_note() -> None:
    from rlmesh.sandbox.library_hints import missing_library_note

    assert missing_library_note("libGL is great", "OpenGL") is None


# --------------------------------------------------------------------------- authentication and TLS

@pytest.fixture
def tcp_server() -> Any:
    servers: list[ServerThread] = []

    def start(env: Any = None, **kwargs: Any) -> str:
        st = ServerThread(env or gym.make("CartPole-v1"), "tcp://127.0.0.1:0", **kwargs)
        servers.append(st.start())
        return st.address

    yield start
    for st in servers:
        st.stop()


async def test_right_token_steps_and_wrong_or_missing_tokens_are_refused(tcp_server: Any, flavour: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLMESH_TOKEN", raising=False)
    address = tcp_server(token=TOKEN)
    with pytest.raises(AuthenticationError, match="requires a token") as info:
        await open_env(flavour, address)
    assert isinstance(info.value, PermissionError) and isinstance(info.value, RLMeshError)
    with pytest.raises(AuthenticationError, match="does not match"):
        await open_env(flavour, address, token="another-token-of-enough-length")
    env = await open_env(flavour, address, token=TOKEN)  # the server kept serving
    obs, _ = await env.reset(seed=0)
    assert obs.shape == (4,)
    await env.close()
    monkeypatch.setenv("RLMESH_TOKEN", TOKEN)  # the default
    env = await open_env(flavour, address)
    await env.reset(seed=0)
    await env.close()


def _authenticate(sock: socket.socket, token: bytes) -> tuple[list[bytes], Any]:
    """A client handshake by hand; returns the bytes it sent and the final reply."""
    conn = Connection()
    nonce = wire_auth.new_nonce()
    sent = [ClientHello(PROTOCOL_VERSION, nonce, 1 << 20).encode(1)]
    sock.sendall(sent[0])
    challenge = AuthChallenge.decode(_read_frame(sock, conn))
    sent.append(AuthProof(wire_auth.proof(token, "client", nonce, challenge.nonce)).encode(2))
    sock.sendall(sent[1])
    return sent, _read_frame(sock, conn)


def _read_frame(sock: socket.socket, conn: Connection) -> Any:
    while True:
        data = sock.recv(1 << 16)
        if not data:
            raise ConnectionError("closed")
        frames = conn.receive_data(data)
        if frames:
            return frames[0]


def test_a_recorded_handshake_cannot_be_replayed(tcp_server: Any) -> None:
    host, port = tcp_server(token=TOKEN).removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sent, reply = _authenticate(sock, TOKEN.encode())
        assert reply.type is MessageType.HELLO
        sock.sendall(encode_message(MessageType.CLOSE, 3, None))
        _read_frame(sock, Connection())
    with socket.create_connection((host, int(port)), timeout=10) as sock:  # the same bytes again
        conn = Connection()
        sock.sendall(sent[0])
        assert _read_frame(sock, conn).type is MessageType.AUTH  # a fresh challenge
        sock.sendall(sent[1])
        error = ErrorBody.decode(_read_frame(sock, conn))
        assert error.kind == "auth"


async def test_a_server_that_cannot_prove_the_token_is_refused(fake: Any, tmp_path: Path) -> None:
    # A fake server asks for a proof, then claims success without knowing the token.
    def hello(rid: int) -> bytes:
        return AuthChallenge(wire_auth.new_nonce()).encode(rid)

    def reply(frame: Any) -> bytes:
        assert frame.type is MessageType.AUTH
        return cartpole_hello(frame.request_id, proof="0" * 64)

    server = fake(reply, hello=hello)
    with pytest.raises(AuthenticationError, match="could not prove"):
        await AsyncRemoteEnv(server.address, token=TOKEN).connect()


async def test_an_explicit_token_refuses_a_server_without_authentication(tcp_server: Any) -> None:
    address = tcp_server(insecure=True)
    with pytest.raises(AuthenticationError, match="did not authenticate"):
        await AsyncRemoteEnv(address, token=TOKEN).connect()


def test_tcp_needs_a_token_and_insecure_only_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLMESH_TOKEN", raising=False)
    env = gym.make("CartPole-v1")
    with pytest.raises(InvalidArgumentError, match="needs a token"):
        EnvServer(env, "tcp://127.0.0.1:0")
    with pytest.raises(InvalidArgumentError, match="loopback"):
        EnvServer(env, "tcp://0.0.0.0:0", insecure=True)
    with pytest.raises(InvalidArgumentError, match="at least 16"):
        EnvServer(env, "tcp://0.0.0.0:0", token="short")
    EnvServer(env, "tcp://0.0.0.0:0", token=TOKEN)
    EnvServer(env, "tcp://[::1]:0", insecure=True)
    result = subprocess.run(
        [sys.executable, "-m", "rlmesh.serve", "CartPole-v1", "--address", "tcp://127.0.0.1:0"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if k != "RLMESH_TOKEN"},
    )
    assert result.returncode == 3 and "RLMESH_TOKEN" in result.stderr and "--token-file" in result.stderr


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return str(cert), str(key)


async def test_tls_with_a_self_signed_certificate(tcp_server: Any, tmp_path: Path, flavour: str) -> None:
    import ssl

    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    address = tcp_server(token=TOKEN, tls=context)
    env = await open_env(flavour, address, token=TOKEN, tls=cert)
    local = gym.make("CartPole-v1")
    obs, _ = await env.reset(seed=3)
    assert np.array_equal(obs, local.reset(seed=3)[0])
    core = env.env if flavour == "async" else env.env._core
    assert core.connection.protocol.direct is None  # TLS bytes are the SSL object's: only the loop writes them
    for t in range(5):
        got, want = await env.step(t % 2), local.step(t % 2)
        assert np.array_equal(got[0], want[0])
    await env.close()
    with pytest.raises(ConnectError, match="TLS"):  # the system store does not trust it
        await open_env(flavour, address, token=TOKEN, tls=True)


def test_serve_subprocess_with_a_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlmesh.serve", "CartPole-v1", "--address", f"tcp://127.0.0.1:{port}",
         "--token-file", str(token_file)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**{k: v for k, v in os.environ.items() if k != "RLMESH_TOKEN"}, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("rlmesh-server ready")
        with pytest.raises(AuthenticationError):
            RemoteEnv(f"tcp://127.0.0.1:{port}", token="not-the-right-token-at-all")
        with RemoteEnv(f"tcp://127.0.0.1:{port}", token=TOKEN) as env:
            env.reset(seed=0)
            assert len(env.step(0)) == 5
    finally:
        proc.terminate()
        proc.wait(20)
        if proc.stdout:
            proc.stdout.close()


# --------------------------------------------------------------------------- lifecycle

async def test_probe_then_connect_never_sees_busy(serve: Serve, flavour: str) -> None:
    address = serve(gym.make("CartPole-v1"))
    path = address.removeprefix("unix://")
    for _ in range(200):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:  # a readiness probe
            probe.connect(path)
        env = await open_env(flavour, address)  # never ServerBusyError
        await env.close()


async def test_open_step_close_200_times_over_tcp_with_a_token(tcp_server: Any, flavour: str) -> None:
    address = tcp_server(token=TOKEN)
    for i in range(200):
        env = await open_env(flavour, address, token=TOKEN)
        await env.reset(seed=i)
        await env.step(0)
        await env.close()


async def test_a_client_that_vanishes_frees_the_slot_at_once(serve: Serve, flavour: str) -> None:
    address = serve(gym.make("CartPole-v1"))
    for _ in range(50):
        env = await open_env(flavour, address)
        await env.reset(seed=0)
        core = env.env if flavour == "async" else env.env._core
        core.connection.abort_threadsafe()  # a killed client: no CLOSE, just a hang-up
        await asyncio.sleep(0)
        again = await open_env(flavour, address)
        await again.close()
        await env.close()


async def test_idle_clients_are_dropped(tmp_path: Path, flavour: str) -> None:
    st = ServerThread(gym.make("CartPole-v1"), f"unix://{tmp_path}/s.sock", idle_timeout=0.3).start()
    try:
        env = await open_env(flavour, st.address)
        await env.reset(seed=0)
        await asyncio.sleep(0.8)
        with pytest.raises(ConnectionClosedError, match="idle_timeout"):
            await env.step(0)
        await env.close()
        env = await open_env(flavour, st.address)  # the slot was freed
        await env.reset(seed=0)
        await env.close()
    finally:
        st.stop()


async def test_a_second_client_is_busy_while_the_first_is_active(serve: Serve) -> None:
    address = serve(gym.make("CartPole-v1"))
    async with AsyncRemoteEnv(address) as first:
        await first.reset(seed=0)
        with pytest.raises(ServerBusyError):
            await AsyncRemoteEnv(address).connect()
        await first.step(0)


async def test_a_flood_of_silent_connections_cannot_lock_a_client_out(serve: Serve) -> None:
    address = serve(gym.make("CartPole-v1"))
    path = address.removeprefix("unix://")
    silent = []
    try:
        for _ in range(100):  # more than the server keeps in their handshake
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            silent.append(sock)
        await asyncio.sleep(0.05)
        async with AsyncRemoteEnv(address) as env:
            await env.reset(seed=0)
    finally:
        for sock in silent:
            sock.close()


async def test_vector_get_attr_call_set_attr(serve: Serve) -> None:
    address = serve(gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync"))
    async with AsyncRemoteVectorEnv(address) as envs:
        assert await envs.get_attr("gravity") == (9.8, 9.8, 9.8)
        await envs.set_attr("gravity", [1.0, 2.0, 3.0])
        assert await envs.get_attr("gravity") == (1.0, 2.0, 3.0)
        with pytest.raises(TypeError, match="cannot cross the wire"):
            await envs.get_attr("np_random")
        with pytest.raises(InvalidArgumentError, match="public attribute"):
            await envs.get_attr("__class__")


# --------------------------------------------------------------------------- leases and dialling

def test_a_server_with_a_lease_stops_when_nobody_comes(tmp_path: Path) -> None:
    st = ServerThread(gym.make("CartPole-v1"), f"unix://{tmp_path}/s.sock", lease=0.3).start()
    st._thread.join(10)
    assert not st._thread.is_alive() and st.error is None
    st.stop()


async def test_a_leased_server_outlives_its_client_by_the_lease(tmp_path: Path) -> None:
    st = ServerThread(gym.make("CartPole-v1"), f"unix://{tmp_path}/s.sock", lease=0.5).start()
    try:
        for _ in range(3):  # while clients keep coming, it keeps serving
            async with AsyncRemoteEnv(st.address) as env:
                await env.reset(seed=0)
                await asyncio.sleep(0.3)
        await asyncio.to_thread(st._thread.join, 10)
        assert not st._thread.is_alive()
    finally:
        st.stop()


async def test_a_dialling_server_serves_one_listener_and_ends_with_it(tmp_path: Path) -> None:
    from rlmesh.client.listener import Listener

    listener = await Listener.open(str(tmp_path / "host.sock"))
    st = ServerThread(gym.make("CartPole-v1"), f"unix://{tmp_path}/host.sock", dial=True)
    st._thread.start()
    try:
        conn = await listener.accept()
        listener.close()
        env = AsyncRemoteEnv()
        env._adopt(conn)
        local = gym.make("CartPole-v1")
        obs, _ = await env.reset(seed=4)
        assert np.array_equal(obs, local.reset(seed=4)[0])
        conn.abort()  # the owner vanishes: the server ends
        await asyncio.to_thread(st._thread.join, 10)
        assert not st._thread.is_alive() and st.error is None
    finally:
        st.stop()
