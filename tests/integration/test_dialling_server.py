"""A dialling server (``rlmesh serve --dial``, what a sandbox runs) and an owner that is gone."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import gymnasium as gym
import pytest

from rlmesh.errors import ConnectError
from rlmesh.server import EnvServer


async def test_a_dialling_server_ends_at_once_when_nobody_listens_on_its_socket(tmp_path: Path) -> None:
    # A sandbox's owner listens before the container exists; a socket file that refuses the
    # server's dial means the owner closed it or was killed (SIGKILL during the start). The
    # server ends then, so the engine removes the container, instead of waiting out its lease.
    path = tmp_path / "host.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen()
    server = EnvServer(lambda: gym.make("CartPole-v1"), f"unix://{path}", dial=True, lease=60.0, ready_message=None)
    with pytest.raises(ConnectError, match="owner is gone"):
        async with asyncio.timeout(10):  # the lease is 60 s: waiting it out is the old failure
            await server.serve_async(install_signal_handlers=False)


async def test_a_dialling_server_still_waits_for_a_socket_that_does_not_exist_yet(tmp_path: Path) -> None:
    path = tmp_path / "host.sock"
    server = EnvServer(lambda: gym.make("CartPole-v1"), f"unix://{path}", dial=True, lease=0.3, ready_message=None)
    with pytest.raises(ConnectError, match="no client listens"):
        async with asyncio.timeout(10):
            await server.serve_async(install_signal_handlers=False)
