"""Placing shards with Ray: one actor per shard starts the shard's sandbox on its node.

``placement="ray"`` (or a :class:`RayPlacement`) on ``SandboxVectorEnv`` /
``AsyncSandboxVectorEnv``: each shard becomes a Ray actor, scheduled by Ray's resources, that
starts the shard's sandbox on its node's own Docker engine, reached through a relay (the
trainer may be on another node), and hands back the relay's address and token. The client then
talks to each sandbox directly: no Ray call per step. Ray owns placement and lifetime: when the
actor ends (its driver exited, or it was killed), its sandbox goes with it (removed by the actor,
or by the sandbox's lease, as the backstop).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..client.remote_shard import RemoteShard
from ..errors import InvalidArgumentError, SandboxError
from .env import SandboxShard
from .options import CLIENT_OPTIONS

__all__ = ["RayPlacement", "RayShards", "start_ray_shards"]


@dataclass(frozen=True)
class RayPlacement:
    """How shards are placed on a Ray cluster.

    Attributes:
        num_cpus: CPUs Ray reserves for each shard's actor (its sandbox runs beside it).
        resources: Extra Ray resources each shard needs (``{"env_node": 1}``, say).
        address: The cluster to join when this process has not called ``ray.init`` (default
            ``RAY_ADDRESS``, else a local cluster).
        spread: Spread the shards over the nodes (Ray's ``SPREAD`` strategy).
    """

    num_cpus: float = 1.0
    resources: dict[str, float] = field(default_factory=dict)
    address: str | None = None
    spread: bool = True

    @classmethod
    def of(cls, placement: Any) -> RayPlacement | None:
        """``placement=`` as a :class:`RayPlacement` (None: shards on this machine's engine).

        Raises:
            InvalidArgumentError: Anything but None, ``"local"``, ``"ray"`` or a RayPlacement.
        """
        if placement is None or placement == "local":
            return None
        if placement == "ray":
            return cls()
        if isinstance(placement, cls):
            return placement
        raise InvalidArgumentError(f"placement must be 'local', 'ray' or a RayPlacement, got {placement!r}")


def _ray() -> Any:
    try:
        import ray  # the extra rlmesh[ray]
    except ImportError as exc:
        raise InvalidArgumentError("placement='ray' needs Ray: pip install 'rlmesh[ray]'") from exc
    return ray


class _ShardHost:
    """A Ray actor that owns one shard's sandbox on its node (defined without Ray's decorator)."""

    def __init__(self) -> None:
        self.env: Any = None

    async def start(self, source: str, num_envs: int, kwargs: dict[str, Any]) -> dict[str, Any]:
        import ray  # the extra rlmesh[ray]

        node_ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]  # Ray leaves it untyped
        kwargs = {k: v for k, v in kwargs.items() if k != "transport"}  # a placed shard is always relayed
        env = SandboxShard(source, num_envs, transport="tcp", **kwargs)
        env.relay_address_host = node_ip
        await env.start()
        self.env = env
        local_address = env._sandbox.local_address if env._sandbox is not None else None
        address, token = await env.detach()
        return {"address": address, "local_address": local_address, "node_ip": node_ip, "token": token,
                "node_id": ray.get_runtime_context().get_node_id(), "container_id": env.container_id}

    async def stop(self) -> None:
        if self.env is not None:
            await self.env.close()
            self.env = None


async def start_ray_shards(placement: RayPlacement, source: str, lane_counts: list[int],
                           kwargs: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Any]]:
    """Start one actor per shard and their sandboxes; returns ``(each shard's endpoint, actors)``.

    Raises:
        SandboxError: A shard could not be started (its error, named).
    """
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=placement.address or os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    actor_cls = ray.remote(_ShardHost)
    options: dict[str, Any] = {"num_cpus": placement.num_cpus, "resources": dict(placement.resources)}
    if placement.spread:
        options["scheduling_strategy"] = "SPREAD"
    actors = [actor_cls.options(**options).remote() for _ in lane_counts]
    refs = [a.start.remote(source, n, kwargs) for a, n in zip(actors, lane_counts, strict=True)]
    endpoints: list[dict[str, Any]] = []
    failure: BaseException | None = None
    for j, ref in enumerate(refs):
        try:
            endpoints.append(await ref)
        except Exception as exc:  # Ray wraps the actor's error; reported below
            failure = failure or SandboxError(f"shard {j} could not be started by its Ray actor: {exc}")
    if failure is not None:
        await stop_ray_shards(actors)
        raise failure
    return endpoints, actors


async def stop_ray_shards(actors: list[Any]) -> None:
    """Ask each actor to remove its sandbox, then end the actors."""
    ray = _ray()
    for actor in actors:
        try:
            await actor.stop.remote()
        except Exception:  # a dead actor's sandbox ends by its lease
            pass
        ray.kill(actor)


def _reach(endpoint: dict[str, Any], here: str) -> str:
    # A shard on this machine's node is reached at its relay's own address, skipping the
    # engine's port proxy (a hop that costs as much as a step); others at the node's port.
    local = endpoint.get("local_address")
    return str(local) if local and endpoint.get("node_ip") == here else str(endpoint["address"])


class RayShards:
    """The shards of a vector sandbox placed by Ray (see the module docstring).

    Args:
        placement: The placement.
        source: The env source.
        lane_counts: Lanes per shard.
        kwargs: The sandbox options and env kwargs each shard gets.
    """

    def __init__(self, placement: RayPlacement, source: str, lane_counts: list[int], kwargs: dict[str, Any]) -> None:
        self.placement = placement
        self._source, self._lane_counts, self._kwargs = source, lane_counts, kwargs
        self.actors: list[Any] = []
        self.endpoints: list[dict[str, Any]] = []

    async def start(self) -> list[RemoteShard]:
        """Start the shards' actors and sandboxes; returns a client for each sandbox, reached directly."""
        client_options = {k: self._kwargs[k] for k in CLIENT_OPTIONS if k in self._kwargs}
        self.endpoints, self.actors = await start_ray_shards(self.placement, self._source, self._lane_counts,
                                                             self._kwargs)
        here = _ray().util.get_node_ip_address()
        return [RemoteShard(_reach(e, here), token=e["token"], **client_options) for e in self.endpoints]

    @property
    def container_ids(self) -> list[str | None]:
        """Each shard's container id (on its node's engine)."""
        return [e.get("container_id") for e in self.endpoints]

    async def stop(self) -> None:
        """Have each actor remove its sandbox, then end the actors. Idempotent."""
        actors, self.actors = self.actors, []
        if actors:
            await stop_ray_shards(actors)
