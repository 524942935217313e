"""Sandboxes against the real Docker engine: parity, hardening, errors, lifecycle."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import anyio
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from rlmesh.errors import (
    BaseImageError,
    ConnectionClosedError,
    ImageBuildError,
    InvalidArgumentError,
    RLMeshError,
    RLMeshTimeoutError,
    SandboxExitedError,
    SandboxStartError,
)
from rlmesh.numpy import AsyncSandboxEnv, AsyncSandboxVectorEnv, SandboxEnv, SandboxVectorEnv

from .conftest import DEFAULT_SIGNALS, PROBE_PKG, inspect, sandbox_containers


def _same(a: object, b: object) -> None:
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape  # type: ignore[union-attr]
        if a.dtype == object:
            for x, y in zip(a.reshape(-1), b.reshape(-1), strict=True):  # type: ignore[union-attr]
                _same(x, y)
        else:
            assert a.tobytes() == b.tobytes()  # type: ignore[union-attr]
    elif isinstance(a, dict):
        assert a.keys() == b.keys()  # type: ignore[attr-defined]
        for k in a:
            _same(a[k], b[k])  # type: ignore[index]
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)  # type: ignore[arg-type]
        for x, y in zip(a, b, strict=True):  # type: ignore[call-overload]
            _same(x, y)
    else:
        assert a == b or (a != a and b != b)


def test_readme_example_parity_and_cleanup() -> None:
    """The headline API, verbatim, matches in-process gymnasium bit for bit."""
    env = SandboxEnv("CartPole-v1", packages=["gymnasium==1.3.0"], imports=["gymnasium"])
    ref = gym.make("CartPole-v1")
    try:
        cid = env.container_id
        assert cid in sandbox_containers()
        assert env.observation_space == ref.observation_space
        assert env.action_space == ref.action_space
        assert env.spec is not None and env.spec.id == "CartPole-v1"
        _same(env.reset(seed=0), ref.reset(seed=0))
        rng = np.random.default_rng(1)
        for _ in range(120):
            action = int(rng.integers(2))
            got, want = env.step(action), ref.step(action)
            _same(got, want)
            if got[2] or got[3]:
                _same(env.reset(), ref.reset())
    finally:
        env.close()
        env.close()  # idempotent
    assert cid not in sandbox_containers()


def test_check_env_passes_whole_on_a_sandbox() -> None:
    import warnings

    def checked(env: gym.Env, **skip: bool) -> set[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env, **skip)
        return {str(w.message) for w in caught}

    # check_env warns about CartPole's infinite bounds in-process too; the sandbox must
    # pass with exactly the warnings the in-process env gets, and no others.
    with SandboxEnv("CartPole-v1") as env:
        assert checked(env, skip_render_check=True) == checked(gym.make("CartPole-v1").unwrapped, skip_render_check=True)
    # Whole: its close check and its render check make a sandbox from env.spec for each render
    # mode ("human" and "rgb_array", which need pygame in the image). gym.make leaves the
    # render mode to the env (no "not in the possible render_modes ([])" warning).
    with SandboxEnv("CartPole-v1", packages=["gymnasium[classic-control]"]) as env:
        warned = checked(env)
    assert not [w for w in warned if "render_mode" in w], warned
    assert warned <= checked(gym.make("CartPole-v1").unwrapped, skip_render_check=True), warned


@pytest.mark.parametrize("mode", ["next_step", "same_step", "disabled"])
async def test_async_vector_sandbox_matches_sync_vector_env(mode: str) -> None:
    ref = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync",
                       vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode[mode.upper()]})
    async with AsyncSandboxVectorEnv("CartPole-v1", num_envs=4, autoreset_mode=mode) as envs:
        assert envs.single_observation_space == ref.single_observation_space
        assert envs.metadata["autoreset_mode"] == ref.metadata["autoreset_mode"]
        _same(await envs.reset(seed=3), ref.reset(seed=3))
        rng = np.random.default_rng(0)
        for _ in range(150):
            actions = rng.integers(0, 2, size=4)
            got = await envs.step(actions)
            _same(got, ref.step(actions))
            if mode == "disabled" and (got[2] | got[3]).any():
                mask = got[2] | got[3]
                _same(await envs.reset(options={"reset_mask": mask}), ref.reset(options={"reset_mask": mask}))


def test_sync_vector_sandbox_and_kwargs_reuse_image() -> None:
    with SandboxVectorEnv("CartPole-v1", num_envs=2) as envs:
        assert isinstance(envs, gym.vector.VectorEnv)
        obs, _ = envs.reset(seed=[1, 2])
        assert obs.shape == (2, 4) and obs.dtype == np.float32
        image = envs._core.image
    # Other num_envs, other env kwargs: the same image.
    with SandboxEnv("CartPole-v1", max_episode_steps=5) as env:
        assert env._core.image == image
        env.reset(seed=0)
        steps = 0
        while True:
            steps += 1
            *_, terminated, truncated, _ = env.step(0 if steps % 2 else 1)
            if terminated or truncated:
                break
        assert steps <= 5


async def test_local_project_dir_package_and_container_hardening() -> None:
    async with AsyncSandboxEnv("rlmesh_probe:make_probe", packages=[PROBE_PKG], imports=["rlmesh_probe"],
                               env={"RLMESH_PROBE": "yes"}, size=3, memory="256m", cpus=1,
                               pids_limit=64, render_mode="rgb_array") as env:
        obs, info = await env.reset(seed=0)
        frame = await env.render()
        assert frame.dtype == np.uint8 and frame.shape == (8, 8, 3) and env.render_mode == "rgb_array"
        assert obs.shape == (3,) and info["size"] == 3
        assert info["uid"] != 0 and info["root_writable"] is False
        assert info["interfaces"] == ["lo"]  # no network by default
        assert info["env_var"] == "yes"
        cfg = inspect(env.container_id)
        host = cfg["HostConfig"]
        assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
        assert host["ReadonlyRootfs"] is True and host["NetworkMode"] == "none"
        assert host["Memory"] == 256 << 20 and host["NanoCpus"] == 10**9 and host["PidsLimit"] == 64
        assert not cfg["NetworkSettings"]["Ports"]
        labels = cfg["Config"]["Labels"]
        assert labels["rlmesh.sandbox"] == "1" and str(os.getpid()) in labels["rlmesh.owner"]
        assert labels["rlmesh.session"]
        # The only host path the container sees is the socket it dials, mounted read-only.
        assert host["Binds"] == [f"{host['Binds'][0].split(':')[0]}:/rlmesh/env.sock:ro"]
        sock = host["Binds"][0].split(":")[0]
        # Its private directory is gone once the container runs (the mount keeps the socket):
        # test_lifecycle.py checks its modes while it exists.
        assert not os.path.exists(os.path.dirname(sock))
        assert host["AutoRemove"] is True and host["MemorySwap"] == host["Memory"]
        assert host["Init"] is True  # the engine's init is PID 1, not the server


async def test_network_opt_in_only_adds_interfaces() -> None:
    # Looks at interfaces only; nothing connects outward.
    async with AsyncSandboxEnv("RlmeshProbe-v0", packages=[PROBE_PKG], imports=["rlmesh_probe"],
                               network=True) as env:
        _, info = await env.reset(seed=0)
        assert "lo" in info["interfaces"] and len(info["interfaces"]) > 1


async def test_missing_import_fails_the_build_naming_it() -> None:
    with pytest.raises(ImageBuildError) as err:
        async with AsyncSandboxEnv("CartPole-v1", imports=["surely_not_a_module_xyz"]):
            pass
    assert "surely_not_a_module_xyz" in err.value.logs
    assert "surely_not_a_module_xyz" in str(err.value)


async def test_unresolvable_package_fails_with_pip_output() -> None:
    with pytest.raises(ImageBuildError) as err:
        async with AsyncSandboxEnv("CartPole-v1", packages=["./no/such/project/dir"]):
            pass
    assert "no/such/project/dir" in err.value.logs or "no/such/project/dir" in str(err.value)


def test_env_that_fails_to_start_reports_exit_code_and_logs() -> None:
    with pytest.raises(SandboxStartError) as err:
        SandboxEnv("rlmesh_probe:make_broken", packages=[PROBE_PKG])
    assert err.value.exit_code not in (None, 0)
    assert "probe env refuses to start" in err.value.logs
    assert "exit code" in str(err.value)


async def test_container_dying_mid_session_is_a_clear_error() -> None:
    async with AsyncSandboxEnv("rlmesh_probe:RlmeshProbe-v0", packages=[PROBE_PKG],
                               env={"RLMESH_PROBE_CRASH": "1"}) as env:
        await env.reset(seed=0)
        with pytest.raises(SandboxExitedError) as err:
            await env.step(1)
        assert isinstance(err.value, ConnectionClosedError)  # what the client saw
        assert err.value.exit_code == 7 and err.value.container_id == env.container_id
        assert "exit code: 7" in str(err.value)
        with pytest.raises(RLMeshError):
            await env.step(0)


def test_container_dying_under_the_sync_fast_path_reports_its_exit_code() -> None:
    with SandboxEnv("rlmesh_probe:RlmeshProbe-v0", packages=[PROBE_PKG], env={"RLMESH_PROBE_CRASH": "1"}) as env:
        env.reset(seed=0)
        with pytest.raises(SandboxExitedError) as err:
            env.step(1)
        assert err.value.exit_code == 7


async def test_interrupted_start_leaves_nothing_behind() -> None:
    env = AsyncSandboxEnv("CartPole-v1")
    task = asyncio.ensure_future(env.start())
    # Cancel once the container exists, i.e. in the middle of start-up.
    for _ in range(400):
        await asyncio.sleep(0.005)
        if env.container_id is not None:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await env.close()


async def test_many_sandboxes_at_once_share_one_build(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rlmesh.sandbox.image")
    # A spec no other test uses, so this run builds it: concurrent starts must build it once.
    marker = f"rlmesh_gather_{os.getpid()}"
    envs = [AsyncSandboxEnv("CartPole-v1", imports=["gymnasium", "json"], env={"MARK": marker},
                            rebuild=False) for _ in range(6)]
    try:
        await asyncio.gather(*(e.start() for e in envs))
        results = await asyncio.gather(*(e.reset(seed=i) for i, e in enumerate(envs)))
        ref = gym.make("CartPole-v1")
        for i, (obs, _) in enumerate(results):
            _same(obs, ref.reset(seed=i)[0])
    finally:
        await asyncio.gather(*(e.close() for e in envs))
    builds = [r for r in caplog.records if r.getMessage().startswith("building sandbox image")]
    assert len(builds) <= 1


async def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(InvalidArgumentError):
        AsyncSandboxEnv("CartPole-v1", memory="lots")
    with pytest.raises(ValueError):
        AsyncSandboxEnv("CartPole-v1", cpus=-1)
    with pytest.raises(ValueError):
        AsyncSandboxVectorEnv("CartPole-v1", num_envs=0)
    with pytest.raises(ValueError):
        AsyncSandboxEnv("CartPole-v1", packages="gymnasium")  # a string, not a list
    with pytest.raises(ValueError):
        AsyncSandboxEnv("CartPole-v1", not_json=object())


async def test_missing_base_image_names_what_to_do() -> None:
    # A registry on a closed loopback port: the pull fails at once without leaving the machine.
    with pytest.raises(BaseImageError) as err:
        async with AsyncSandboxEnv("CartPole-v1", base_image="127.0.0.1:9/rlmesh/missing:none"):
            pass
    assert "127.0.0.1:9/rlmesh/missing:none" in str(err.value)


def _run_py(code: str) -> subprocess.CompletedProcess[str]:
    return _run_py_env(code)


def test_interpreter_exit_without_close_removes_the_container() -> None:
    result = _run_py("""
        from rlmesh.numpy import SandboxEnv
        env = SandboxEnv("CartPole-v1")
        env.reset(seed=0)
        print(env.container_id)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() not in sandbox_containers()


def test_a_killed_owner_s_sandboxes_end_by_themselves() -> None:
    # SIGKILL: no atexit, no signal handler, no close. The servers see their owner's socket
    # close and exit; the engine removes the containers. No rlmesh call is made after the kill.
    result = _run_py("""
        import os, signal
        from rlmesh.numpy import SandboxEnv, SandboxVectorEnv
        env = SandboxEnv("CartPole-v1")
        envs = SandboxVectorEnv("CartPole-v1", num_envs=2)
        print(env.container_id, envs.container_id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert result.returncode == -signal.SIGKILL, result.stderr
    cids = result.stdout.split()
    assert len(cids) == 2
    deadline = time.monotonic() + 10  # the lease: the server's exit, then the engine's removal
    while set(cids) & sandbox_containers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not set(cids) & sandbox_containers()
    assert subprocess.run([sys.executable, "-m", "rlmesh", "sandbox", "cleanup"], capture_output=True).returncode == 0


def test_dead_owner_is_listed_by_ls_and_reaped_by_cleanup(sandbox_image: str) -> None:
    # A container that outlived its owner (an rlmesh that crashed before it could dial, say),
    # made by hand with the labels of an owner that is dead.
    import socket as socket_module

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pidns = os.readlink("/proc/self/ns/pid").removeprefix("pid:[").removesuffix("]")
    label = f"{socket_module.gethostname()}:{pidns}:{dead.stdout.strip()}:1:deadbeef"
    cid = subprocess.run(
        ["docker", "run", "-d", "--network", "none", "--label", "rlmesh.sandbox=1", "--label", f"rlmesh.owner={label}",
         sandbox_image, "sleep", "300"], capture_output=True, text=True, check=True,
    ).stdout.strip()
    try:
        listing = subprocess.run([sys.executable, "-m", "rlmesh", "sandbox", "ls"], capture_output=True, text=True)
        assert cid[:12] in listing.stdout and "dead" in listing.stdout
        cleanup = subprocess.run([sys.executable, "-m", "rlmesh", "sandbox", "cleanup"], capture_output=True, text=True)
        assert cleanup.returncode == 0, cleanup.stderr
        assert cid not in sandbox_containers()
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)


def test_no_engine_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = _run_py_env(
        """
        from rlmesh.errors import DockerUnavailableError
        from rlmesh.numpy import SandboxEnv
        try:
            SandboxEnv("CartPole-v1")
        except DockerUnavailableError as exc:
            print("OK", exc)
        """,
        DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock",
    )
    assert result.stdout.startswith("OK"), result.stderr
    assert "dockerd" in result.stdout and "DOCKER_HOST" in result.stdout


async def test_local_wheel_file_package(tmp_path) -> None:  # type: ignore[no-untyped-def]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(tmp_path), PROBE_PKG],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("rlmesh_probe-*.whl")
    async with AsyncSandboxEnv("RlmeshProbe-v0", packages=[str(wheel)], imports=["rlmesh_probe"]) as env:
        obs, info = await env.reset(seed=0)
        assert obs.shape == (4,) and info["uid"] != 0


def _run_py_env(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "RLMESH_PULL_POLICY": "never", **env})


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.4])
async def test_cancelled_concurrent_starts_leave_nothing_behind(delay: float) -> None:
    # Cancel while the engine is still creating containers: every one must still be removed.
    envs = [AsyncSandboxEnv("CartPole-v1") for _ in range(6)]
    tasks = [asyncio.ensure_future(e.start()) for e in envs]
    await asyncio.sleep(delay)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*(e.close() for e in envs))


def test_ctrl_c_during_sync_start_leaves_nothing_behind() -> None:
    import signal
    import time

    # The child restores Python's SIGINT handler: run in the background (`nohup ... &`), the
    # test runner ignores SIGINT, a child inherits that, and it would never stop.
    proc = subprocess.Popen(
        [sys.executable, "-c", DEFAULT_SIGNALS + "from rlmesh.numpy import SandboxEnv\nwhile True:\n"
         "    SandboxEnv('CartPole-v1').close()"],
        env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # Interrupt once one of its sandboxes exists, i.e. somewhere inside a start.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _owned_by(proc.pid):
            time.sleep(0.02)
        assert _owned_by(proc.pid), "the script never started a sandbox"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert "KeyboardInterrupt" in err
    assert not _owned_by(proc.pid)


def _owned_by(pid: int) -> set[str]:
    out = subprocess.run(
        ["docker", "ps", "-a", "--filter", "label=rlmesh.sandbox", "--format", '{{.ID}} {{.Label "rlmesh.owner"}}'],
        check=True, capture_output=True, text=True,
    ).stdout
    return {line.split()[0] for line in out.splitlines() if f":{pid}:" in line}


async def test_connect_timeout_is_a_deadline_over_the_engine_s_work_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # A busy engine (256 starts at once) took seconds to create and start containers, and
    # connect_timeout only began once they ran: 15 s fired at 17.4 s. The engine's work now counts.
    # The engine is made slow here by delaying its create call (the real call follows the delay).
    from rlmesh.sandbox._docker import DockerClient

    env = AsyncSandboxEnv("CartPole-v1", connect_timeout=3.0)
    await env.start()  # the image, outside the deadline (builds have none)
    await env.close()
    real_create = DockerClient.create
    created: list[str] = []

    async def slow_create(self: DockerClient, config: dict[str, object], name: str | None = None) -> str:
        await asyncio.sleep(30)
        cid = await real_create(self, config, name)
        created.append(cid)
        return cid

    monkeypatch.setattr(DockerClient, "create", slow_create)
    env = AsyncSandboxEnv("CartPole-v1", connect_timeout=1.0)
    with pytest.raises(RLMeshTimeoutError, match=r"connect_timeout=1.0s: the Docker engine was still creating"):
        with anyio.fail_after(25):  # the old code waited for the create (30 s), then started
            await env.start()
    await env.close()
    assert not created and not sandbox_containers(ours=True)
