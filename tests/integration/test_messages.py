"""Messages that say what to do (issue #20, section 5), for what needs no Docker engine.

The status line is read from a real pseudo-terminal, ``rlmesh serve`` and ``rlmesh --version``
run as real processes, and Gymnasium's registry is the real one.
"""

from __future__ import annotations

import logging
import os
import select
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from rlmesh.errors import EnvClosedError, InvalidArgumentError, SourceError
from rlmesh.sandbox.env import AsyncSandboxEnv
from rlmesh.sandbox.sources import GymSource, parse_source
from rlmesh.sandbox.sync_sandbox import SandboxEnv
from rlmesh.sandbox.vector import AsyncSandboxVectorEnv

# What a build reports, line by line: pip on the host, then the engine's legacy builder.
_BUILD_LINES = [
    ("resolve", "Looking in links: /root/.cache/rlmesh/wheels"),
    ("resolve", "WARNING: Location '/nowhere' is ignored: it is neither a file nor a directory."),
    ("resolve", "Collecting gymnasium==1.4.0"),
    ("build", "Step 7/19 : RUN python -m pip install --no-index /opt/rlmesh/wheels/*.whl"),
    ("build", " ---> Using cache"),
    ("build", " ---> Running in 0d88ab307da2"),
    ("build", "Processing /opt/rlmesh/wheels/numpy-2.1.0-cp311-cp311-manylinux_2_17_x86_64.whl"),
    ("build", "Removing intermediate container 0d88ab307da2"),
    ("build", " ---> 4f5e6d7c8b9a"),
]


def _status_on_a_terminal(columns: int, *, progress: str = "None") -> str:
    """What a Reporter draws on a real pseudo-terminal ``columns`` wide (0: one that reports none)."""
    import fcntl
    import termios

    code = (
        "from rlmesh.sandbox.progress import Reporter\n"
        f"report = Reporter({progress}, 'rlmesh-sandbox:test')\n"
        f"for phase, line in {_BUILD_LINES!r}:\n"
        "    report(phase, line)\n"
        "report.close()\n"
    )
    master, slave = os.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24 if columns else 0, columns, 0, 0))
        proc = subprocess.Popen([sys.executable, "-c", code], stderr=slave, stdout=subprocess.DEVNULL)
        os.close(slave)
        out = b""
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
    return out.decode(errors="replace")


def test_the_status_line_shows_the_step_and_the_package_not_the_noise() -> None:
    shown = _status_on_a_terminal(100)
    assert "step 7/19" in shown and "numpy-2.1.0" in shown and "collecting gymnasium==1.4.0" in shown
    for noise in ("Using cache", "Removing intermediate container", "WARNING: Location", "Running in", "---> 4f5e"):
        assert noise not in shown, shown


def test_a_terminal_that_reports_no_width_gets_plain_lines() -> None:
    shown = _status_on_a_terminal(0)
    lines = [line for line in shown.splitlines() if line.strip()]
    assert any(line.startswith("rlmesh build [") and "step 7/19: installing numpy-2.1.0" in line for line in lines), shown
    assert any("step 7/19: RUN python -m pip install" in line for line in lines), shown


def test_vector_options_on_a_single_env_name_the_class_called_and_its_vector_twin() -> None:
    with pytest.raises(InvalidArgumentError) as sync_error:
        SandboxEnv("CartPole-v1", num_envs=4)
    assert str(sync_error.value).startswith("SandboxEnv runs a single env and takes no num_envs=")
    assert "SandboxVectorEnv('CartPole-v1', num_envs=4)" in str(sync_error.value)
    assert "AsyncSandboxEnv" not in str(sync_error.value)
    with pytest.raises(InvalidArgumentError, match=r"^AsyncSandboxEnv runs a single env .* AsyncSandboxVectorEnv\("):
        AsyncSandboxEnv("CartPole-v1", num_envs=2)
    AsyncSandboxVectorEnv("CartPole-v1", num_envs=2)  # the vector class takes it (nothing starts yet)


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rlmesh.serve", *args, "--address", f"unix://{tmp_path}/s.sock"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )


def test_serve_says_in_one_line_why_the_env_cannot_be_made(tmp_path: Path) -> None:
    result = _serve(tmp_path, "CartPol-v1")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rlmesh serve: cannot make the env CartPol-v1: NameNotFound: ")
    assert "Did you mean: `CartPole`?" in lines[0] and "--log-level debug shows the traceback" in lines[0]
    debug = _serve(tmp_path, "CartPol-v1", "--log-level", "debug")
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "gymnasium.error.NameNotFound" in debug.stderr


def test_an_unregistered_namespace_names_the_module_to_import(tmp_path: Path) -> None:
    # ale_py is installed here (the dev extra) but not imported, so ALE is not registered.
    result = _serve(tmp_path, "ALE/Pong-v5")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "NamespaceNotFound: Namespace ALE not found" in result.stderr
    assert "imports=['ale_py']" in result.stderr and "--import ale_py" in result.stderr
    # And with the import, the same id is made.
    code = "from rlmesh.server import check_imports, load_env\ncheck_imports(['ale_py'])\nload_env('ALE/Pong-v5').close()"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0


def test_a_namespace_no_installed_package_registers_says_what_to_add(tmp_path: Path) -> None:
    result = _serve(tmp_path, "NoSuchSpace/Thing-v0")
    assert result.returncode == 1
    assert "add the package that registers namespace NoSuchSpace to packages= and its module to imports=" in (
        result.stderr)


def test_rlmesh_version() -> None:
    from rlmesh import __version__

    result = subprocess.run([sys.executable, "-m", "rlmesh", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"rlmesh {__version__}"


def test_py_scheme_names_a_factory_without_doubt() -> None:
    parsed = parse_source("py://rlmesh_probe:make_probe")
    assert isinstance(parsed, GymSource) and parsed.target == "rlmesh_probe:make_probe"
    assert parse_source("rlmesh_probe:make_probe") == GymSource("rlmesh_probe:make_probe")
    with pytest.raises(SourceError, match="a Gymnasium id goes as gym://"):
        parse_source("py://CartPole-v1")
    with pytest.raises(SourceError, match="not a py://module:factory"):
        parse_source("py://no-colon")


async def test_a_failed_removal_of_a_replaced_image_is_a_warning_not_lost(caplog: pytest.LogCaptureFixture) -> None:
    from rlmesh.sandbox.image import remove_replaced_image

    caplog.set_level(logging.INFO, logger="rlmesh")
    # An engine that cannot be reached: the sandbox runs already, so this is a warning, never raised.
    await remove_replaced_image("unix:///nonexistent/rlmesh-test/docker.sock", "sha256:" + "0" * 64)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warned and "could not remove the image sha256:000000000000 replaced by the rebuild" in warned[0].getMessage()
    assert "rlmesh image prune" in warned[0].getMessage()


async def test_a_vector_sandbox_used_before_its_start_says_how_to_start_it() -> None:
    envs = AsyncSandboxVectorEnv("CartPole-v1", num_envs=2)
    try:
        for call in (lambda: envs.reset(seed=0), lambda: envs.step([0, 1]), lambda: envs.render()):
            with pytest.raises(EnvClosedError, match=r"not started: use `async with \.\.\.`, or `await envs.start\(\)`"):
                await call()
    finally:
        await envs.close()


def test_a_missing_dependency_note_names_the_sandbox_and_the_package() -> None:
    from rlmesh.sandbox.library_hints import missing_dependency_note

    pygame = missing_dependency_note("gymnasium.error.DependencyNotInstalled",
                                     'pygame is not installed, run `pip install "gymnasium[classic-control]"`')
    assert pygame is not None and "missing in the sandbox, not on this host" in pygame
    assert 'add packages=["gymnasium[classic-control]"]' in pygame
    box2d = missing_dependency_note("gymnasium.error.DependencyNotInstalled",
                                    'Box2D is not installed, you can install it by run `pip install swig` followed by '
                                    '`pip install "gymnasium[box2d]"`')
    assert box2d is not None and 'add packages=["gymnasium[box2d]"]' in box2d
    assert "add the package it names" in (missing_dependency_note("x.DependencyNotInstalled", "foo is missing") or "")
    assert missing_dependency_note("builtins.ValueError", "pygame is not installed") is None
