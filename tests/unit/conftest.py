"""Fixtures for the unit layer: pure logic, no sockets, no container engine, seconds.

Every test here runs with ``DOCKER_HOST`` pointing at a socket that does not exist, so a test
that reaches for an engine fails instead of passing on a machine that happens to have one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

NO_ENGINE = "unix:///nonexistent/rlmesh-unit-tests-have-no-engine.sock"


@pytest.fixture(autouse=True)
def no_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point ``DOCKER_HOST`` at nothing for the test's duration."""
    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)
    yield
