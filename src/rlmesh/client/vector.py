"""AsyncRemoteVectorEnv: a vector env served by one or more ``rlmesh serve --num-envs N``."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

from ..errors import InvalidArgumentError
from .env import AsyncRemoteEnv
from .remote_shard import RemoteShard
from .shards import AsyncShardedVectorEnv

__all__ = ["AsyncRemoteVectorEnv"]


class AsyncRemoteVectorEnv(AsyncShardedVectorEnv):
    """A vector env served by ``rlmesh serve --num-envs N``, stepped with asyncio.

    It follows ``gymnasium.vector.VectorEnv`` exactly: an int seed means seed+i
    per lane, ``options["reset_mask"]`` resets some lanes, and the server's
    autoreset mode (``metadata["autoreset_mode"]``) decides what a step after
    an episode end returns.

    Example::

        async with AsyncRemoteVectorEnv("unix:///tmp/cartpole.sock") as envs:
            obs, info = await envs.reset(seed=0)

    Takes the arguments of :class:`~rlmesh.client.env.AsyncRemoteEnv`. Given a list of addresses,
    it is one vector env over those servers' lanes in order (each server a shard; seeds offset
    per server): see :class:`~rlmesh.client.shards.AsyncShardedVectorEnv`.
    """

    __signature__: ClassVar[inspect.Signature] = inspect.signature(AsyncRemoteEnv)

    def __init__(self, address: str | Sequence[str], **options: Any) -> None:
        addresses = [address] if isinstance(address, str) or address is None else list(address)
        if not addresses:
            raise InvalidArgumentError("a list of server addresses must not be empty")
        super().__init__([RemoteShard(a, **options) for a in addresses])
        self.address = address
