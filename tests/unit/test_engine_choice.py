"""Engine.choose: where a sandbox runs and how it is reached, from docker_host=, transport= and DOCKER_HOST."""

from __future__ import annotations

from typing import Any

import pytest

from rlmesh.errors import InvalidArgumentError
from rlmesh.sandbox.engine import Engine


def test_this_machine_s_engine_is_dialled_over_a_unix_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST")
    assert Engine.choose(None, None) == Engine(None, relay=False, address_host="127.0.0.1", local=True)
    assert Engine.choose("unix:///run/other.sock", None) == Engine("unix:///run/other.sock", relay=False,
                                                                   address_host="127.0.0.1", local=True)


def test_a_local_engine_through_a_relay_when_asked() -> None:
    engine = Engine.choose("unix:///var/run/docker.sock", "tcp")
    assert engine.relay and engine.local and engine.address_host == "127.0.0.1"


@pytest.mark.parametrize(
    ("host", "address_host"),
    [("tcp://10.1.2.3:2376", "10.1.2.3"), ("tcp://engine.example:2375/", "engine.example"),
     ("tcp://[::1]:2375", "::1")],
)
def test_an_engine_elsewhere_is_reached_through_a_relay_at_its_host(host: str, address_host: str) -> None:
    for transport in (None, "tcp"):
        engine = Engine.choose(host, transport)
        assert engine == Engine(host, relay=True, address_host=address_host, local=False)


def test_docker_host_from_the_environment_decides_locality(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://192.0.2.7:2376")
    engine = Engine.choose(None, None)
    assert engine.host is None and engine.relay and not engine.local and engine.address_host == "192.0.2.7"


def test_an_engine_elsewhere_cannot_mount_this_machine_s_socket() -> None:
    with pytest.raises(InvalidArgumentError, match="use transport='tcp'"):
        Engine.choose("tcp://10.1.2.3:2376", "unix")


@pytest.mark.parametrize("host", ["10.1.2.3:2376", "ssh://me@host", "tcp://", 5])
def test_a_malformed_docker_host_is_refused(host: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="docker_host must be"):
        Engine.choose(host, None)


@pytest.mark.parametrize("transport", ["udp", "TCP", ""])
def test_an_unknown_transport_is_refused(transport: str) -> None:
    with pytest.raises(InvalidArgumentError, match="transport must be"):
        Engine.choose(None, transport)
