"""A sandbox whose Docker engine stops under it (a real dockerd of its own, sent SIGTERM)."""

from __future__ import annotations

import contextlib
import signal
import time

import pytest

from rlmesh.errors import DockerUnavailableError, SandboxExitedError
from rlmesh.numpy import SandboxEnv

from .conftest import extra_engine


def test_a_sandbox_whose_engine_stops_says_that_the_engine_stopped(sandbox_image: str) -> None:
    with extra_engine(sandbox_image, "engine3", "rlmesh-br3", "172.29.78.1/24") as (host, dockerd):
        env = SandboxEnv("CartPole-v1", docker_host=host)
        try:
            env.reset(seed=0)
            dockerd.send_signal(signal.SIGTERM)  # as `systemctl stop docker` does
            deadline = time.monotonic() + 60
            with pytest.raises(SandboxExitedError) as info:
                while time.monotonic() < deadline:
                    if env.step(0)[2]:
                        env.reset()
            message = str(info.value)
            # It used to blame "a docker kill, stop or rm -f from outside rlmesh", with exit code 0.
            assert "Docker engine stopped" in message and "start the engine again" in message, message
            assert "from outside rlmesh" not in message and info.value.killed_by == "stopped"
            dockerd.wait(60)
        finally:
            with contextlib.suppress(DockerUnavailableError):  # nothing is left to remove it from
                env.close()
