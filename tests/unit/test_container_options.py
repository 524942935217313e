"""ContainerOptions and the runtime options of a sandbox: validated on the host, before any engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rlmesh.errors import InvalidArgumentError
from rlmesh.numpy import AsyncSandboxEnv
from rlmesh.sandbox.options import MIN_DEFAULT_MEMORY, ContainerOptions, default_memory, memory_bytes


@pytest.fixture
def engine_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An engine socket path of this test's own (DOCKER_HOST names it), in a directory ``run``."""
    run = tmp_path / "run"
    run.mkdir()
    sock = run / "docker.sock"
    sock.touch()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    return sock


@pytest.mark.parametrize("volume", ["{sock}:/x", "{run}:/host-run", "{run}:/r:ro"])
def test_the_engine_socket_is_refused_as_a_volume(volume: str, engine_socket: Path) -> None:
    spec = volume.format(sock=engine_socket, run=engine_socket.parent)
    with pytest.raises(InvalidArgumentError, match="allow_engine_socket"):
        ContainerOptions(volumes=[spec])
    ContainerOptions(volumes=[spec], allow_engine_socket=True)  # explicitly allowed


def test_a_directory_beside_the_engine_socket_is_fine(engine_socket: Path, tmp_path: Path) -> None:
    other = tmp_path / "data"
    other.mkdir()
    assert ContainerOptions(volumes=[f"{other}:/data"]).binds() == [f"{other}:/data"]


@pytest.mark.parametrize("memory", ["0.5", "inf", "-1", "0", 0, -5, "1k", "nan", "2 gigs", True, 1.5])
def test_memory_sizes_are_parsed_strictly(memory: object) -> None:
    with pytest.raises(InvalidArgumentError, match="memory"):
        memory_bytes(memory)


def test_memory_sizes_that_are_fine() -> None:
    assert memory_bytes("512m") == 512 << 20
    assert memory_bytes("1.5GiB") == 3 << 29
    assert memory_bytes(1 << 30) == 1 << 30


def test_the_default_memory_is_a_quarter_in_whole_mib_and_at_least_1_gib() -> None:
    assert default_memory(64 << 30) == 16 << 30
    assert default_memory((16 << 30) + 12345) == 4 << 30  # rounded down to a whole MiB
    assert default_memory(1 << 30) == MIN_DEFAULT_MEMORY


def test_the_root_group_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="root group"):
        ContainerOptions(user="1000:0")
    with pytest.raises(InvalidArgumentError, match="root"):
        ContainerOptions(user="0:1000")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gpus": 0}, "gpus"),
        ({"gpus": "some"}, "gpus"),
        ({"gpus": [""]}, "gpus"),
        ({"devices": "/dev/null"}, "must be a list"),
        ({"devices": ["/dev/definitely-missing"]}, "does not exist"),
        ({"devices": ["/dev/null:/dev/x:rwz"]}, "permissions"),
        ({"devices": ["relative"]}, "must be"),
        ({"volumes": ["/tmp"]}, "must be"),
        ({"volumes": {"/definitely/missing": "/data"}}, "does not exist"),
        ({"volumes": ["/tmp:/data:rx"]}, "ro or rw"),
        ({"volumes": ["/tmp:/rlmesh"]}, "reserved"),
        ({"user": "0"}, "never runs a sandbox as root"),
        ({"user": "0:0"}, "never runs a sandbox as root"),
        ({"user": "nobody"}, "numbers"),
        ({"env": {"A=B": "1"}}, "env"),
        ({"env": {"A": 1}}, "env"),
        ({"network": "yes"}, "network"),
        ({"memory": 0}, "memory"),
        ({"cpus": True}, "cpus"),
        ({"pids_limit": 0}, "pids_limit"),
    ],
)
def test_runtime_options_are_validated(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        AsyncSandboxEnv("CartPole-v1", **kwargs)


def test_runtime_options_map_to_docker_config() -> None:
    opts = ContainerOptions(gpus="all", devices=["/dev/null:/dev/probe-null:r"], volumes={"/tmp": "/data"},
                            user="1234:4321", env={"A": "1"})
    assert opts.device_requests() == [{"Driver": "", "Count": -1, "Capabilities": [["gpu"]]}]
    assert ContainerOptions(gpus=2).device_requests()[0]["Count"] == 2
    assert ContainerOptions(gpus=["GPU-1"]).device_requests()[0]["DeviceIDs"] == ["GPU-1"]
    assert opts.device_mappings() == [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/probe-null",
                                       "CgroupPermissions": "r"}]
    assert opts.binds() == ["/tmp:/data"] and opts.run_as() == "1234:4321"
