"""Containment and lifecycle under real Docker: safe defaults, bombs, signals, fork, builds, edges."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from rlmesh.errors import ImageBuildError, InvalidArgumentError, RemoteEnvError, SandboxExitedError
from rlmesh.numpy import AsyncSandboxEnv, SandboxEnv
from rlmesh.sandbox.options import DEFAULT_PIDS_LIMIT

from .conftest import DEFAULT_SIGNALS, PROBE_PKG, inspect, sandbox_containers

REPO = Path(__file__).resolve().parents[2]
PROBE = "rlmesh_probe:make_probe"


def _script(code: str, timeout: float = 180) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", DEFAULT_SIGNALS + textwrap.dedent(code)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )


# --------------------------------------------------------------------------- defaults

async def _cgroup_file(env: AsyncSandboxEnv, v2: str, v1: str) -> str:
    try:
        return str(await env.call("read_file", f"/sys/fs/cgroup/{v2}"))
    except FileNotFoundError:  # cgroup v1
        return str(await env.call("read_file", f"/sys/fs/cgroup/{v1}"))


async def test_default_sandbox_has_finite_limits_and_no_writable_host_path() -> None:
    async with AsyncSandboxEnv(PROBE, packages=[PROBE_PKG]) as env:
        assert env.request_timeout == 300.0
        host = inspect(env.container_id)["HostConfig"]
        assert host["PidsLimit"] == DEFAULT_PIDS_LIMIT and host["Memory"] >= 1 << 30
        assert host["MemorySwap"] == host["Memory"] and host["AutoRemove"] is True
        pids_max = (await _cgroup_file(env, "pids.max", "pids/pids.max")).strip()
        memory_max = (await _cgroup_file(env, "memory.max", "memory/memory.limit_in_bytes")).strip()
        assert pids_max == str(DEFAULT_PIDS_LIMIT)
        assert memory_max != "max" and int(memory_max) == host["Memory"]
        # Every place the env can write is a size-bounded tmpfs (or the IPC namespace's message
        # queues, bounded by RLIMIT_MSGQUEUE); the socket it dials is read-only.
        for point, fstype, options in await env.call("writable_mounts"):
            assert (fstype == "tmpfs" and "size=" in options) or fstype == "mqueue", (point, fstype, options)
        assert "/rlmesh/env.sock" not in [m[0] for m in await env.call("writable_mounts")]


async def test_a_memory_bomb_ends_the_sandbox_flagged_out_of_memory() -> None:
    env = AsyncSandboxEnv(PROBE, packages=[PROBE_PKG], memory="256m")
    async with env:
        await env.reset(seed=0)
        started = time.monotonic()
        with pytest.raises(SandboxExitedError) as info:
            await env.call("memory_bomb")
        elapsed = time.monotonic() - started
        err = info.value
        assert err.oom_killed and err.killed_by == "memory" and err.exit_code == 137 and "lack of memory" in str(err)
        assert isinstance(err, ConnectionError)
    print(f"memory bomb contained in {elapsed:.2f} s")


async def test_a_docker_kill_is_not_called_out_of_memory() -> None:
    # Both end in SIGKILL (137) and the engine removes the container at once: the engine's
    # events tell them apart.
    async with AsyncSandboxEnv("CartPole-v1", memory="256m") as env:
        await env.reset(seed=0)
        subprocess.run(["docker", "kill", env.container_id], check=True, capture_output=True)
        with pytest.raises(SandboxExitedError) as info:
            await env.step(0)
        err = info.value
        assert err.exit_code == 137 and not err.oom_killed and err.killed_by == "engine"
        assert "docker kill" in str(err) and "memory" not in str(err).split("\n")[0]


async def test_a_fork_bomb_hits_the_pids_limit() -> None:
    async with AsyncSandboxEnv(PROBE, packages=[PROBE_PKG], pids_limit=64) as env:
        await env.reset(seed=0)
        result = await env.call("fork_bomb")
        assert result["error"] == "BlockingIOError" and result["children"] < 64
        cid = env.container_id
        assert len(await env.step(0)) == 5  # the server is still there
    assert cid not in sandbox_containers()  # the children went with the container


async def test_a_hung_env_is_a_timeout_and_the_sandbox_is_closable() -> None:
    async with AsyncSandboxEnv(PROBE, packages=[PROBE_PKG], request_timeout=0.5) as env:
        await env.reset(seed=0)
        with pytest.raises(TimeoutError):
            await env.call("hang")


async def test_env_output_cannot_fake_readiness(caplog: pytest.LogCaptureFixture) -> None:
    # The env prints the server's ready line, then takes its time: the start waits for the
    # server's own connection and handshake.
    async with AsyncSandboxEnv("rlmesh_probe:make_spoofer", packages=[PROBE_PKG]) as env:
        obs, _ = await env.reset(seed=0)
        assert obs.shape == (4,)


# --------------------------------------------------------------------------- builds

async def test_builds_have_no_network_and_check_imports_as_the_sandbox_user(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="rlmesh.sandbox.image")
    async with AsyncSandboxEnv(PROBE, packages=[PROBE_PKG], imports=["rlmesh_probe.netcheck"], rebuild=True):
        pass
    lines = [r.getMessage() for r in caplog.records if "RLMESH-BUILD-INTERFACES" in r.getMessage()]
    assert lines, "the import check did not run"
    for line in lines:  # no interface but (at most) loopback: the build had no network
        interfaces = line.split("RLMESH-BUILD-INTERFACES", 1)[1].strip()
        assert set(filter(None, interfaces.split(","))) <= {"lo"}, line


def _all_images() -> set[str]:
    out = subprocess.run(["docker", "images", "-aq", "--no-trunc"], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


async def test_a_failed_build_leaves_no_image(tmp_path: Path) -> None:
    project = tmp_path / "probe"
    shutil.copytree(PROBE_PKG, project)
    (project / "src" / "rlmesh_probe" / "unique.py").write_text(f"TOKEN = {uuid.uuid4().hex!r}\n")  # new layers
    before = _all_images()
    with pytest.raises(ImageBuildError, match="surely_not_a_module"):
        async with AsyncSandboxEnv(PROBE, packages=[str(project)], imports=["surely_not_a_module_xyz"]):
            pass
    assert _all_images() - before == set()


# --------------------------------------------------------------------------- signals, kills, fork

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signalled_owner_removes_its_sandboxes_and_exits_as_signalled(sig: signal.Signals) -> None:
    proc = _script("""
        import signal, sys, time
        from rlmesh.numpy import SandboxVectorEnv
        envs = SandboxVectorEnv("CartPole-v1", num_envs=2)
        envs.reset(seed=0)
        print(envs.container_id, flush=True)
        while True:
            time.sleep(1)
    """)
    try:
        assert proc.stdout is not None
        cid = proc.stdout.readline().strip()
        assert cid in sandbox_containers(), proc.stderr.read() if proc.stderr else ""
        sent = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert code == -sig  # the default action ran after the cleanup: the status a scheduler expects
    assert cid not in sandbox_containers()
    print(f"{sig.name}: exited and cleaned up in {took:.2f} s")


def test_a_user_signal_handler_still_runs_after_the_cleanup() -> None:
    proc = _script("""
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *a: (print("user handler", flush=True), sys.exit(3)))
        from rlmesh.numpy import SandboxEnv
        env = SandboxEnv("CartPole-v1")
        print(env.container_id, flush=True)
        while True:
            time.sleep(1)
    """)
    try:
        assert proc.stdout is not None
        cid = proc.stdout.readline().strip()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3 and "user handler" in out
    assert cid not in sandbox_containers()


def test_a_forked_child_has_its_own_loop_and_sandboxes() -> None:
    proc = _script("""
        import os, sys
        from rlmesh.numpy import SandboxEnv
        parent = SandboxEnv("CartPole-v1")
        parent.reset(seed=0)
        pid = os.fork()
        if pid == 0:
            try:
                child = SandboxEnv("CartPole-v1")
                child.reset(seed=1)
                child.step(0)
                print("child", child.container_id, flush=True)
                child.close()
            except BaseException as exc:
                print("child failed", repr(exc), flush=True)
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        parent.step(0)  # the child neither closed nor broke the parent's sandbox
        print("parent", parent.container_id, flush=True)
        parent.close()
    """)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out + err
    ids = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.split()[0] in ("parent", "child")}
    assert set(ids) == {"parent", "child"} and ids["parent"] != ids["child"]
    assert not set(ids.values()) & sandbox_containers()


def test_a_killed_owner_s_sandbox_ends_while_its_forked_child_lives() -> None:
    # The child inherits every descriptor of the parent's connection (the transport's, and the
    # one sync callers write on): none may keep the sandbox's connection open once the owner is
    # gone.
    proc = _script("""
        import os, signal, time
        from rlmesh.numpy import SandboxEnv
        env = SandboxEnv("CartPole-v1")
        env.reset(seed=0)
        env.step(0)
        pid = os.fork()
        if pid == 0:
            time.sleep(120)
            os._exit(0)
        print(env.container_id, pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    child = None
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert len(line) == 2, proc.stderr.read() if proc.stderr else ""
        cid, child = line[0], int(line[1])
        proc.wait(timeout=60)
        deadline = time.monotonic() + 30
        while cid in sandbox_containers() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert os.path.exists(f"/proc/{child}")  # the child still runs ...
        assert cid not in sandbox_containers()  # ... and the sandbox is gone
    finally:
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        proc.communicate(timeout=30)
        # The killed owner's socket directory (it could not remove it).
        subprocess.run([sys.executable, "-m", "rlmesh", "sandbox", "cleanup"], capture_output=True, cwd=REPO)


def test_the_loop_thread_after_shutdown_is_a_clear_error() -> None:
    proc = _script("""
        import asyncio
        from rlmesh import _portal
        from rlmesh.errors import RLMeshError
        _portal.get_portal()
        _portal._shutdown()
        try:
            _portal.call(asyncio.sleep, 0)
        except RLMeshError as exc:
            print("OK", exc)
    """)
    out, err = proc.communicate(timeout=60)
    assert out.startswith("OK") and "shut down" in out, err


# --------------------------------------------------------------------------- argument edges (pure ones: tests/unit)

def test_a_runtime_the_engine_lacks_is_a_clear_error() -> None:
    with pytest.raises(InvalidArgumentError, match="not a runtime of this Docker engine") as info:
        SandboxEnv("CartPole-v1", runtime="no-such-runtime")
    assert "runc" in str(info.value)


def test_removal_failures_at_exit_are_logged(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    from rlmesh.sandbox import ownership

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    ownership.register("0" * 64, str(tmp_path / "rlmesh-sbx-test"))
    caplog.set_level(logging.INFO, logger="rlmesh.sandbox")
    ownership.remove_all_now("test")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("could not remove sandbox 000000000000 at test" in w and "docker rm -f" in w for w in warnings)


def test_remote_errors_from_the_probe_keep_their_type() -> None:
    with SandboxEnv(PROBE, packages=[PROBE_PKG]) as env:
        env.reset(seed=0)
        with pytest.raises(RemoteEnvError) as info:
            env.call("read_file", "/no/such/file")
        assert isinstance(info.value, FileNotFoundError)
        assert "uvloop" not in info.value.remote_traceback  # no unrelated ImportError chained in


# --------------------------------------------------------------------------- versions and environment

async def test_the_sandbox_gets_the_host_s_gymnasium_and_any_pythonpath(caplog: pytest.LogCaptureFixture) -> None:
    import gymnasium

    async with AsyncSandboxEnv(PROBE, packages=[PROBE_PKG], env={"PYTHONPATH": "/nowhere"}) as env:
        assert await env.call("gymnasium_version") == gymnasium.__version__
        obs, _ = await env.reset(seed=0)  # rlmesh is found whatever PYTHONPATH the user sets
        assert obs.shape == (4,)


# --------------------------------------------------------------------------- errors users can act on

def test_a_misspelled_id_is_gymnasium_s_error_with_its_suggestion_first() -> None:
    import gymnasium

    with pytest.raises(gymnasium.error.NameNotFound) as info:
        SandboxEnv("CartPol-v1")
    err = info.value
    first = str(err).splitlines()[0]
    assert "CartPol" in first and "Did you mean" in first and "CartPole" in first
    assert err.container_id and "Traceback" in err.logs
