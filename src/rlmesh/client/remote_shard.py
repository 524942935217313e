"""RemoteShard: a vector env's lanes on one server, over one connection; and SplitStep."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

from ..errors import InvalidArgumentError
from ..protocol import Frame, MessageType, ServerHello
from ..protocol.messages import decode_lane_values
from .env import _AsyncRemoteBase

__all__ = ["RemoteShard", "SplitStep"]


class SplitStep:
    """``step_async``/``step_wait`` (Gymnasium's split step): ``step_async`` sends the step before it
    returns (the actions are encoded, their buffer free again), and the envs step while the caller
    does something else; ``step_wait`` returns the result."""

    _pending: Any = None  # what begin_step returned, until step_wait

    if TYPE_CHECKING:  # the class's own
        async def begin_step(self, actions: Any, /) -> Any: ...
        async def end_step(self, sent: Any, /) -> tuple[Any, Any, Any, Any, dict[str, Any]]: ...
        def drop(self, sent: Any, /) -> None: ...

    def _check_can_step(self) -> None:
        """Raise (EnvClosedError ...) where a step cannot be sent or received."""

    def _check_no_pending(self) -> None:
        # As Gymnasium's AsyncVectorEnv: one step at a time (step() too, while one is split).
        if self._pending is not None:
            raise InvalidArgumentError("a step was sent whose result was not received: call step_wait (or recv) first")

    async def step_async(self, actions: Any) -> None:
        """Send a step and return once it is sent; :meth:`step_wait` returns its result."""
        self._check_no_pending()
        self._check_can_step()
        self._pending = await self.begin_step(actions)

    async def step_wait(self) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """The result of the step sent by :meth:`step_async`."""
        self._check_can_step()
        if self._pending is None:
            raise InvalidArgumentError("step_wait without step_async")
        sent, self._pending = self._pending, None
        return await self.end_step(sent)

    def _drop_pending(self) -> None:
        sent, self._pending = self._pending, None
        if sent is not None:
            self.drop(sent)


class RemoteShard(SplitStep, _AsyncRemoteBase):
    """A vector env's lanes on one server (``rlmesh serve --num-envs N``), over one connection.

    It follows ``gymnasium.vector.VectorEnv`` exactly: an int seed means seed+i
    per lane, ``options["reset_mask"]`` resets some lanes, and the server's
    autoreset mode (``metadata["autoreset_mode"]``) decides what a step after
    an episode end returns. The public vector classes
    (:class:`~rlmesh.client.vector.AsyncRemoteVectorEnv`,
    :class:`~rlmesh.sandbox.vector.AsyncSandboxVectorEnv`) are made of one or more shards.

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

    # -- a split step (SplitStep), and EnvPool-style send/recv -----------------
    # One server steps its lanes together; a vector env of several shards steps whole shards.
    batch_size: int | None = None

    def _check_can_step(self) -> None:
        _ = self.connection  # EnvClosedError when closed or not started

    def step_body(self, action: Any) -> Any:
        """The STEP request body (no step may be split and pending meanwhile)."""
        self._check_no_pending()
        return super().step_body(action)

    async def send(self, actions: Any, env_ids: Sequence[int] | None = None) -> None:
        """Step every lane (a server steps its lanes together: ``env_ids`` must be all of them)."""
        if env_ids is not None and sorted({int(i) for i in env_ids}) != list(range(self.num_envs)):
            raise InvalidArgumentError(
                f"env_ids must be all {self.num_envs} lanes: one server steps its lanes together "
                "(split the lanes over several containers with shards=K to step part of them)"
            )
        await self.step_async(actions)

    async def recv(self) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """The result of :meth:`send`, with ``info["env_id"]`` naming the lanes."""
        self._check_can_step()
        if self._pending is None:
            raise InvalidArgumentError("recv without send")
        obs, rewards, terms, truncs, info = await self.step_wait()
        info["env_id"] = np.arange(self.num_envs)
        return obs, rewards, terms, truncs, info

    async def close(self) -> None:
        """Close the connection (a step still in flight is cancelled). Idempotent."""
        self._drop_pending()
        await super().close()
