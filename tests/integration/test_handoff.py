"""Connections handed over as file descriptors: the relay passes each TCP client to the server
and leaves the data path (what sandboxes reached over TCP use); hostile handoff peers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest

from rlmesh import RemoteEnv
from rlmesh.errors import AuthenticationError
from rlmesh.server.handoff import MAX_FDS_PER_MESSAGE, MAX_HANDOFF_PEERS, hand_off

from ..helpers import ServerThread, assert_same_episodes

REPO = Path(__file__).resolve().parents[2]
TOKEN = "handoff-test-token-0123456789abcdef"


def _spawn(*args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src"), **env})


def _wait_for(predicate: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _sockets(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except FileNotFoundError:
            pass
    return count


def test_a_relay_hands_clients_over_and_stops_when_its_server_dies(tmp_path: Path) -> None:
    handoff = tmp_path / "h.sock"
    server = _spawn("rlmesh.serve", "CartPole-v1", "--address", f"unix://{tmp_path}/s.sock", "--require-token",
                    "--handoff", str(handoff), RLMESH_TOKEN=TOKEN)
    relay = _spawn("rlmesh.relay", "--listen", "tcp://127.0.0.1:0", "--handoff", f"unix://{handoff}",
                   "--lease", "600")  # a long lease: only the server's end may stop it here
    try:
        assert relay.stdout is not None
        ready = relay.stdout.readline()
        assert "rlmesh-relay ready on tcp://127.0.0.1:" in ready, relay.stderr.read() if relay.stderr else ""
        address = ready.split()[3]
        sockets_idle = _sockets(relay.pid)
        with RemoteEnv(address, token=TOKEN) as env:
            assert_same_episodes(env, gym.make("CartPole-v1"), 100, seed=3)
            # The relay kept nothing of the client's connection: steps go straight to the server.
            assert _sockets(relay.pid) == sockets_idle
            server_peers = _sockets(server.pid)
        assert server_peers >= 4  # its two listeners, its end of the relay's channel, and the client
        with pytest.raises(AuthenticationError):  # the server behind the relay asks the token
            RemoteEnv(address, token=None, connect_timeout=10)
        assert relay.poll() is None
        server.send_signal(signal.SIGKILL)  # no clean-up at all: the kernel ends the channel
        relay.wait(timeout=15)
        assert relay.stderr is not None and "server is gone" in relay.stderr.read()
    finally:
        for proc in (relay, server):
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)


def test_a_relay_without_a_server_stops_after_its_lease(tmp_path: Path) -> None:
    relay = _spawn("rlmesh.relay", "--listen", "tcp://127.0.0.1:0", "--handoff", f"unix://{tmp_path}/h.sock",
                   "--lease", "0.5")
    _, err = relay.communicate(timeout=30)
    assert relay.returncode == 0 and "no server" in err


def test_a_relay_stops_once_no_client_is_connected_for_its_lease(tmp_path: Path) -> None:
    # Its server lives on (and could hold the channel forever): the relay counts the clients
    # itself, handed over or not, and stops its published port once none was connected for
    # its lease.
    handoff = tmp_path / "h.sock"
    server = _spawn("rlmesh.serve", "CartPole-v1", "--address", f"unix://{tmp_path}/s.sock", "--require-token",
                    "--handoff", str(handoff), RLMESH_TOKEN=TOKEN)
    relay = _spawn("rlmesh.relay", "--listen", "tcp://127.0.0.1:0", "--handoff", f"unix://{handoff}", "--lease", "2")
    try:
        assert relay.stdout is not None
        address = relay.stdout.readline().split()[3]
        with RemoteEnv(address, token=TOKEN) as env:
            env.reset(seed=0)
            time.sleep(3)  # longer than the lease, with a client connected: the relay stays
            assert relay.poll() is None
            env.step(0)
        _, err = relay.communicate(timeout=30)  # the client left: the lease runs out
        assert "no client for 2s" in err
        assert server.poll() is None
    finally:
        for proc in (relay, server):
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)


def test_handoff_needs_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rlmesh.errors import InvalidArgumentError
    from rlmesh.server import EnvServer

    monkeypatch.delenv("RLMESH_TOKEN", raising=False)
    with pytest.raises(InvalidArgumentError, match="needs a token"):
        EnvServer(gym.make("CartPole-v1"), f"unix://{tmp_path}/s.sock", handoff=str(tmp_path / "h.sock"))


def _ended(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False


def _adopted_clients(st: ServerThread) -> int:
    server = st.server
    return len(server.slots.pending) + len(server.slots.waiting) + len(server.slots.active)


def test_hostile_handoff_peers_cannot_hurt_the_server(tmp_path: Path) -> None:
    handoff = tmp_path / "h.sock"
    st = ServerThread(gym.make("CartPole-v1"), f"unix://{tmp_path}/s.sock", handoff=str(handoff), token=TOKEN,
                      hello_timeout=0.5).start()
    try:
        _wait_for(handoff.exists, 10, "no handoff socket")
        before = len(os.listdir("/proc/self/fd"))
        peers = []
        for _ in range(MAX_HANDOFF_PEERS + 3):  # more peers than allowed: the extra ones are closed
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            peer.connect(str(handoff))
            peers.append(peer)
        channel = peers[0]
        _wait_for(lambda: all(_ended(p) for p in peers[MAX_HANDOFF_PEERS:]), 10, "the peers over the limit were not closed")
        assert not any(_ended(p) for p in peers[:MAX_HANDOFF_PEERS])
        # Descriptors that cannot carry a client are closed: a pipe, a listening socket, an
        # unconnected one, a datagram socket.
        r, w = os.pipe()
        listening = socket.create_server(("127.0.0.1", 0))
        unconnected = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        datagram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        datagram.connect(("127.0.0.1", 9))
        socket.send_fds(channel, [b"x"], [r, listening.fileno(), unconnected.fileno(), datagram.fileno()])
        # More descriptors in one message than are read: the kernel drops the rest.
        pairs = [socket.socketpair() for _ in range(MAX_FDS_PER_MESSAGE + 3)]
        socket.send_fds(channel, [b"x"], [a.fileno() for a, _ in pairs])
        channel.sendall(os.urandom(1 << 20))  # junk bytes, no descriptors: ignored
        for fd in (r, w):
            os.close(fd)
        for s in (listening, unconnected, datagram, *[a for a, _ in pairs], *peers[1:]):
            s.close()
        # The adopted socketpair ends are clients in their handshake: silent, so dropped after
        # hello_timeout. Their peers here see the end.
        for _, b in pairs[:MAX_FDS_PER_MESSAGE]:
            b.settimeout(10)
            while b.recv(1 << 16):  # (an ERROR frame may come first)
                pass
        # The server still takes a real client handed over on the same channel.
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]

        def pass_one() -> None:
            conn, _ = listener.accept()
            hand_off(channel, conn)

        passer = threading.Thread(target=pass_one)
        passer.start()
        with RemoteEnv(f"tcp://127.0.0.1:{port}", token=TOKEN, connect_timeout=10) as env:
            assert_same_episodes(env, gym.make("CartPole-v1"), 30, seed=5)
        passer.join(10)
        listener.close()
        channel.close()
        for _, b in pairs:
            b.close()
        _wait_for(lambda: _adopted_clients(st) == 0, 10, "adopted connections were left open")
        # Nothing the peers sent is still held: the process has the descriptors it had before.
        _wait_for(lambda: len(os.listdir("/proc/self/fd")) <= before, 10,
                  f"descriptors leaked: {len(os.listdir('/proc/self/fd'))} > {before}")
    finally:
        st.stop()


@pytest.mark.parametrize(("runtime", "gvisor"), [
    ("runc", False), ("io.containerd.runc.v2", False), ("nvidia", False),
    ("runsc", True), ("runsc-kvm", True), ("fast-sandbox", True),  # an alias of the runsc binary
])
def test_gvisor_runtimes_get_the_forwarding_relay(runtime: str, gvisor: bool) -> None:
    # gVisor cannot receive a host descriptor: its relay forwards bytes; every other runtime's
    # hands clients over. Judged by the runtime's name and by the binary the engine runs for it.
    from rlmesh.sandbox.container import _is_gvisor

    info = {"Runtimes": {"runc": {"path": "runc"}, "runsc": {"path": "/usr/bin/runsc"},
                         "fast-sandbox": {"path": "/usr/local/bin/runsc", "runtimeArgs": ["--platform=kvm"]},
                         "nvidia": {"path": "nvidia-container-runtime"}}}
    assert _is_gvisor(runtime, info) is gvisor
