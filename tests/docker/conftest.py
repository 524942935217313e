"""Fixtures for the Docker-backed sandbox tests (layer 4).

These run against the real engine. They never skip: without Docker they fail, so that CI
cannot pass without exercising them. Every test proves that it left no container behind.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlmesh.sandbox.ownership import owner, owner_alive

# Tests never reach a registry: the default base resolves to the bootstrapped one, and pip
# (image builds, local wheels) runs offline against the wheelhouse that set-up fills.
ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = ROOT / ".cache" / "test-wheels"
os.environ["RLMESH_PULL_POLICY"] = "never"
os.environ["PIP_NO_INDEX"] = "1"
os.environ["PIP_FIND_LINKS"] = str(WHEELHOUSE)
os.environ["RLMESH_APT_OFFLINE"] = "1"  # Debian packages from the cache set-up filled
os.environ.setdefault("RLMESH_CACHE_DIR", str(ROOT / ".cache" / "rlmesh"))
# Ray's switch for single-machine clusters: every node, and every address, on 127.0.0.1 (nothing
# here talks to the machine's other addresses). Ray reads it once, when it is first imported, so it
# is set before any test imports ray; its workers inherit it.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

PROBE_PKG = str(Path(__file__).parent / "probe_pkg")
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


OWNER_LABEL = owner().label

# The first line of a child script that a test signals. A test run in the background (`nohup
# ... &`) ignores SIGINT and SIGHUP, and its children inherit that (Python installs its SIGINT
# handler only where SIGINT is not ignored): the child restores what a foreground process has.
DEFAULT_SIGNALS = (
    "import signal as _signal; _signal.signal(_signal.SIGINT, _signal.default_int_handler); "
    "_signal.signal(_signal.SIGHUP, _signal.SIG_DFL)\n"
)


def sandbox_containers(*, ours: bool = False) -> set[str]:
    """Sandbox container ids; with ``ours``, only those of this process or of dead owners.

    Another process's live sandboxes (a second test run, a benchmark) are not ours to judge.
    """
    out = subprocess.run(
        ["docker", "ps", "-a", "--no-trunc", "--filter", "label=rlmesh.sandbox",
         "--format", '{{.ID}} {{.Label "rlmesh.owner"}}'],
        check=True, capture_output=True, text=True,
    ).stdout
    ids = set()
    for line in out.splitlines():
        cid, _, owner = line.partition(" ")
        if not ours or owner == OWNER_LABEL or not owner_alive(owner):
            ids.add(cid)
    return ids


def socket_dirs() -> set[str]:
    """Sandbox socket dirs of this process or of dead processes (named rlmesh-sbx-PID-...)."""
    root = Path(os.environ.get("RLMESH_RUNTIME_DIR") or "/tmp")
    out = set()
    for p in root.glob("rlmesh-sbx-*"):
        pid = p.name.split("-")[2]
        if p.is_dir() and pid.isdigit() and (int(pid) == os.getpid() or not Path(f"/proc/{pid}").exists()):
            out.add(str(p))
    return out


@pytest.fixture(scope="session", autouse=True)
def _docker_engine() -> None:
    result = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail("the sandbox tests need a running Docker engine: run ./scripts/dev setup\n" + result.stderr)
    if not (WHEELHOUSE / ".complete").is_file():
        pytest.fail(f"no offline wheelhouse at {WHEELHOUSE}: run ./scripts/dev test (it fills it)")
    base = subprocess.run(["docker", "image", "inspect", f"python:{PY}-slim"], capture_output=True)
    boot = subprocess.run(["docker", "image", "inspect", f"rlmesh/base:py{PY}"], capture_output=True)
    if base.returncode and boot.returncode:
        pytest.fail("no sandbox base image: run `rlmesh image bootstrap` (./scripts/dev setup does)")


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Assert that the test left no sandbox container and no socket directory behind."""
    before_c, before_d = sandbox_containers(ours=True), socket_dirs()
    yield
    leaked_c = sandbox_containers(ours=True) - before_c
    leaked_d = socket_dirs() - before_d
    for cid in leaked_c:  # clean up so one leak does not fail every later test
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
    assert not leaked_c, f"test leaked sandbox containers: {sorted(leaked_c)}"
    assert not leaked_d, f"test leaked socket directories: {sorted(leaked_d)}"


def inspect(container_id: str) -> dict:
    import json

    out = subprocess.run(["docker", "inspect", container_id], check=True, capture_output=True, text=True).stdout
    return json.loads(out)[0]


@pytest.fixture(scope="session")
def sandbox_image() -> str:
    """The base image the sandboxes build on (for containers a test makes by hand)."""
    for tag in (f"python:{PY}-slim", f"rlmesh/base:py{PY}"):
        if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0:
            return tag
    pytest.fail("no sandbox base image")


@pytest.fixture(scope="session")
def second_engine(sandbox_image: str) -> Iterator[str]:
    """A second, real Docker engine on this machine, reached over loopback TCP, with a bridge of
    its own (a daemon started with --bridge=none would delete the main engine's docker0), its own
    data root, exec root and pid file, and the sandbox base image loaded into it."""
    with extra_engine(sandbox_image, "engine2", "rlmesh-br2", "172.29.77.1/24") as (host, _):
        yield host


@contextlib.contextmanager
def extra_engine(sandbox_image: str, name: str, bridge: str, address: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start another real dockerd (as :func:`second_engine` describes), named ``name`` (its roots
    are under /tmp/rlmesh-NAME), with its own ``bridge`` at ``address``; yields its host URL and
    its process (a test may stop it), and stops it and removes everything at the end."""
    import shutil
    import signal
    import socket
    import time

    root = Path(f"/tmp/rlmesh-{name}")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", address, "dev", bridge], check=True)
    subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    host = f"tcp://127.0.0.1:{port}"
    log = open(root / "dockerd.log", "w")
    proc = subprocess.Popen(
        ["dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
         "--pidfile", str(root / "docker.pid"), "-H", host, "--bridge", bridge,
         "--iptables=false", "--ip-masq=false"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(120):
            if subprocess.run(["docker", "-H", host, "info"], capture_output=True).returncode == 0:
                break
            if proc.poll() is not None:
                pytest.fail(f"the second dockerd exited:\n{(root / 'dockerd.log').read_text()[-3000:]}")
            time.sleep(0.5)
        else:
            pytest.fail(f"the second dockerd did not come up:\n{(root / 'dockerd.log').read_text()[-3000:]}")
        with subprocess.Popen(["docker", "save", sandbox_image], stdout=subprocess.PIPE) as save:
            subprocess.run(["docker", "-H", host, "load", "-q"], stdin=save.stdout, check=True, capture_output=True)
        yield host, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A two-node Ray cluster on this machine, every address on 127.0.0.1; its address."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    try:
        assert cluster.address.startswith("127.0.0.1:"), cluster.address
        yield cluster.address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
