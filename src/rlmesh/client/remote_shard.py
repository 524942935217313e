"""RemoteShard: a vector env's lanes on one server, over one connection."""

from __future__ import annotations

from typing import Any

from gymnasium import spaces
from gymnasium.vector import AutoresetMode

from ..protocol import Frame, MessageType, ServerHello
from ..protocol.messages import decode_lane_values
from .env import _AsyncRemoteBase

__all__ = ["RemoteShard"]


class RemoteShard(_AsyncRemoteBase):
    """A vector env's lanes on one server (``rlmesh serve --num-envs N``), over one connection.

    It follows ``gymnasium.vector.VectorEnv`` exactly: an int seed means seed+i
    per lane, ``options["reset_mask"]`` resets some lanes, and the server's
    autoreset mode (``metadata["autoreset_mode"]``) decides what a step after
    an episode end returns. The public vector classes
    (:class:`~rlmesh.client.vector.AsyncRemoteVectorEnv`,
    :class:`~rlmesh.sandbox.vector.AsyncSandboxVectorEnv`) are made of one or more shards, and
    step them (:class:`~rlmesh.client.shards.AsyncShardedVectorEnv`): a shard holds the
    connection, the spaces and the codecs, not a step of its own.

    Takes the arguments of :class:`AsyncRemoteEnv`.
    """

    _vector = True
    _entry_point = "rlmesh:RemoteEnv"
    _vector_entry_point = "rlmesh:RemoteVectorEnv"

    num_envs: int
    single_observation_space: spaces.Space[Any]
    single_action_space: spaces.Space[Any]

    def _apply_hello(self, hello: ServerHello) -> None:
        super()._apply_hello(hello)
        assert hello.num_envs is not None and hello.single_observation_space is not None
        assert hello.single_action_space is not None
        self.num_envs = hello.num_envs
        self.single_observation_space = hello.single_observation_space
        self.single_action_space = hello.single_action_space
        self.metadata["autoreset_mode"] = AutoresetMode(hello.autoreset_mode or "NextStep")  # checked by decode

    @property
    def autoreset_mode(self) -> AutoresetMode:
        """The server's autoreset mode."""
        mode: AutoresetMode = self.metadata["autoreset_mode"]
        return mode

    def lanes_result(self, frame: Frame) -> tuple[Any, ...]:
        """The checked value of a CALL reply that has one item per lane."""
        return self.connection.unwrap(frame, MessageType.CALL, self._decode_lanes)

    def _decode_lanes(self, frame: Frame) -> tuple[Any, ...]:
        return decode_lane_values(frame, self.num_envs)

    async def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call ``name`` on every lane, as ``VectorEnv.call``; one result per lane."""
        return self.lanes_result(await self.request(MessageType.CALL, self.call_body("call", name, args, kwargs)))

    async def get_attr(self, name: str) -> tuple[Any, ...]:
        """Every lane's attribute ``name``, as ``VectorEnv.get_attr``."""
        return self.lanes_result(await self.request(MessageType.CALL, self.call_body("get_attr", name)))

    async def set_attr(self, name: str, values: Any) -> None:
        """Set ``name`` on every lane, as ``VectorEnv.set_attr`` (one value, or one per lane)."""
        await self._call("set_attr", name, (values,))
