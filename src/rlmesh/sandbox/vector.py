"""AsyncSandboxVectorEnv: a vector env in one or more containers rlmesh owns (its shards)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

from .._checks import check_num_envs
from ..client.lanes import resolve_shards, split_lanes
from ..client.remote_shard import RemoteShard
from ..client.restarts import check_restarts
from ..client.shards import AsyncShardedVectorEnv
from ..errors import InvalidArgumentError, ProtocolError
from ..protocol import parse_autoreset_mode, parse_vectorization_mode
from .env import OPTION_DOCS, SandboxArguments, SandboxShard, options_signature
from .placement import RayPlacement, RayShards

__all__ = ["AsyncSandboxVectorEnv"]


class AsyncSandboxVectorEnv(AsyncShardedVectorEnv):
    """A vector env (``num_envs`` lanes) in a Docker container that rlmesh owns, or in several.

    Example::

        async with AsyncSandboxVectorEnv("CartPole-v1", num_envs=8) as envs:
            obs, info = await envs.reset(seed=0)
            obs, rewards, terminations, truncations, infos = await envs.step(envs.action_space.sample())

    Takes ``num_envs``, ``vectorization_mode`` (``sync``, ``async`` or ``vector``, as in
    ``gymnasium.make_vec``), ``autoreset_mode`` (``next_step``, ``same_step``, ``disabled``),
    ``shards`` (a count, or ``"auto"`` for one per available core, capped by ``num_envs``: the
    lanes run in that many sandboxes, stepped at once, as :class:`~rlmesh.client.shards.AsyncShardedVectorEnv`
    describes) and ``placement`` (``"local"``, or ``"ray"`` / a
    :class:`~rlmesh.sandbox.placement.RayPlacement`: each shard started by a Ray actor on some
    node) besides the options below.
    """

    __signature__: ClassVar[inspect.Signature]  # every option (set below)

    def __init__(self, source: str, num_envs: int = 1, *, vectorization_mode: str = "sync",
                 autoreset_mode: str = "next_step", shards: int | str = 1, placement: Any = None,
                 restarts: int = 0, restart_on: Sequence[str] = ("exit", "timeout"), **kwargs: Any) -> None:
        lanes = self.check_arguments(source, num_envs, vectorization_mode=vectorization_mode,
                                     autoreset_mode=autoreset_mode, shards=shards, placement=placement,
                                     restarts=restarts, restart_on=restart_on, **kwargs)
        vector = {"vectorization_mode": vectorization_mode, "autoreset_mode": autoreset_mode}
        self.placement = RayPlacement.of(placement)
        self._ray: RayShards | None = None
        if self.placement is None:
            super().__init__([SandboxShard(source, n, **vector, **kwargs) for n in lanes])
        else:  # the shards start on Ray's nodes: their arguments were checked above
            self._ray = RayShards(self.placement, source, lanes, {**vector, **kwargs})
            super().__init__([])
        self._restarts.budget, self._restarts.on = check_restarts(restarts, restart_on)
        # A replacement shard is made as the first were (with the image they built: no rebuild).
        self._shard_arguments = (source, {**vector, **kwargs, "rebuild": False})
        self.source = source

    @classmethod
    def check_arguments(cls, source: str, num_envs: int = 1, *, vectorization_mode: str = "sync",
                        autoreset_mode: str = "next_step", shards: int | str = 1, placement: Any = None,
                        restarts: int = 0, restart_on: Sequence[str] = ("exit", "timeout"),
                        **kwargs: Any) -> list[int]:
        """Check this class's arguments, as its constructor does, without making anything (no
        shard, no sandbox, no engine connection); returns the lanes of each shard.

        Raises:
            InvalidArgumentError: A bad option (the constructor's errors, word for word).
        """
        check_num_envs(num_envs)
        parse_vectorization_mode(vectorization_mode)
        parse_autoreset_mode(autoreset_mode)
        lanes = split_lanes(num_envs, resolve_shards(shards, num_envs))
        check_restarts(restarts, restart_on)
        if RayPlacement.of(placement) is not None and restarts:
            raise InvalidArgumentError("restarts= works with local shards only for now: drop placement=, or "
                                       "restarts= (a lost Ray actor raises, as without restarts)")
        SandboxArguments.check(cls.__name__, source, kwargs, vector=True)
        return lanes

    async def _open_shards(self) -> list[RemoteShard]:
        if self._ray is None:
            return self.shards
        return await self._ray.start()

    async def _replace_shard(self, j: int) -> None:
        """Remove shard ``j``'s container and start a new one like it, from the same image."""
        old = self.shards[j]
        await old.close()
        source, arguments = self._shard_arguments
        a, b = self.bounds[j]
        new = SandboxShard(source, b - a, **arguments)
        try:
            await new.start()
        except BaseException:
            await asyncio.shield(new.close())
            raise
        self.shards[j] = new
        if new.single_observation_space != self.single_observation_space or (
            new.single_action_space != self.single_action_space
        ):
            raise ProtocolError(f"the replacement of shard {j} serves other spaces than the shard it replaced")

    async def close(self) -> None:
        """Close the connections and remove every shard's container. Idempotent."""
        try:
            await super().close()
        finally:
            if self._ray is not None:
                await self._ray.stop()

    @property
    def container_ids(self) -> list[str | None]:
        """Each shard's container id (on its node's engine, with Ray), else None."""
        if self._ray is not None:
            return self._ray.container_ids
        return [shard.container_id if isinstance(shard, SandboxShard) else None for shard in self.shards]

    @property
    def container_id(self) -> str | None:
        """The first shard's container id, or None."""
        ids = self.container_ids
        return ids[0] if ids else None

    @property
    def container_logs(self) -> str:
        """The last lines the first shard's container printed (``shards[j].container_logs``: shard j's)."""
        first = self.shards[0] if self.shards else None
        return first.container_logs if isinstance(first, SandboxShard) else ""

    @property
    def image(self) -> str | None:
        """The image the shards run (None before the start, and with Ray: each node has its own)."""
        first = self.shards[0] if self.shards else None
        return first.image if isinstance(first, SandboxShard) else None

    @property
    def image_id(self) -> str | None:
        """The id (digest) of the image the shards run (None before the start, and with Ray)."""
        first = self.shards[0] if self.shards else None
        return first.image_id if isinstance(first, SandboxShard) else None

    @property
    def options(self) -> Any:
        """The sandbox options (:class:`~rlmesh.sandbox.options.SandboxOptions`) of the first shard."""
        first = self.shards[0] if self.shards else None
        return first.options if isinstance(first, SandboxShard) else None


def _vector_parameters() -> list[inspect.Parameter]:
    init = inspect.signature(AsyncSandboxVectorEnv.__init__).parameters
    return [init[name] for name in ("num_envs", "vectorization_mode", "autoreset_mode", "shards", "placement",
                                    "restarts", "restart_on")]


AsyncSandboxVectorEnv.__doc__ = (AsyncSandboxVectorEnv.__doc__ or "") + OPTION_DOCS
AsyncSandboxVectorEnv.__signature__ = options_signature(*_vector_parameters())
