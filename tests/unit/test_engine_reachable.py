"""DockerClient.engine_reachable: what tells a stopped engine from a `docker kill`."""

from __future__ import annotations

from pathlib import Path

from rlmesh.sandbox._docker import DockerClient


async def test_an_engine_whose_socket_is_gone_is_not_reachable(tmp_path: Path) -> None:
    client = DockerClient(f"unix://{tmp_path}/docker.sock")  # a stopped dockerd removes its socket
    try:
        assert await client.engine_reachable(timeout=5.0) is False
    finally:
        await client.close()


async def test_an_engine_port_nobody_listens_on_is_not_reachable() -> None:
    client = DockerClient("tcp://127.0.0.1:9")  # discard: nothing listens there
    try:
        assert await client.engine_reachable(timeout=5.0) is False
    finally:
        await client.close()
