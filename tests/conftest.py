"""Shared fixtures: an in-process env server on a Unix socket, and the async/sync flavour."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.envs  # noqa: F401  (registers the rlmesh-test/* envs)

from .helpers import FLAVOURS, Flavoured, ServerThread, open_env


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    """A Unix socket path; short enough for the 108-byte sun_path limit."""
    return tmp_path / "s.sock"


@pytest.fixture
def serve(sock_path: Path) -> Iterator[Callable[..., str]]:
    """``serve(env_or_factory, address=None, **server_kwargs) -> address``: serve in-process until the test ends.

    The default address is ``unix://<tmp_path>/s.sock``; several servers in one
    test need explicit addresses.
    """
    servers: list[ServerThread] = []

    def start(env_or_factory: Any, address: str | None = None, **server_kwargs: Any) -> str:
        st = ServerThread(env_or_factory, address or f"unix://{sock_path}", **server_kwargs)
        servers.append(st.start())
        return st.address

    yield start
    errors = []
    for st in reversed(servers):
        try:
            st.stop()
        except BaseException as exc:  # stop every server before reporting
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    """Run the test against the async core ("async") and the sync shell ("sync")."""
    return str(request.param)


@pytest.fixture
async def connect(flavour: str, serve: Callable[..., str]) -> AsyncIterator[Callable[..., Any]]:
    """``await connect(address, vector=False, **kwargs) -> Flavoured``; closed at teardown.

    It depends on ``serve`` so that envs are closed before their servers stop.
    """
    opened: list[Flavoured] = []

    async def open_(address: str, *, vector: bool = False, **kwargs: Any) -> Flavoured:
        env = await open_env(flavour, address, vector=vector, **kwargs)
        opened.append(env)
        return env

    yield open_
    for env in opened:
        with contextlib.suppress(Exception):
            await env.close()
