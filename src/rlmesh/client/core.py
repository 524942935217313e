"""What the sync shells drive: the async cores' protocols.

An async core is one of the Async* classes (a remote env, a sandbox, a sharded vector env).
The sync shells (:mod:`rlmesh.sync`) are generic over :class:`AsyncEnvCore` and
:class:`AsyncVectorCore`: they never ask which class a core is.

The hot calls (reset, step, render) are planned by the core (``plan_reset``, ``plan_step``,
``plan_render``: a :class:`~rlmesh.client.pipeline.Plan`) and sent by the caller: an async
caller awaits the core's own ``reset``/``step``/``render`` (the plan sent on the loop), a sync
shell sends the same plan from its own thread
(:func:`rlmesh.client.caller_thread.send_plan`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec

if TYPE_CHECKING:
    from ..protocol import SpecData
    from .pipeline import Plan

__all__ = ["AsyncEnvCore", "AsyncVectorCore"]


class _AsyncCore(Protocol):
    """What every async core has: its spaces, what the server said, its lifecycle, its plans."""

    observation_space: spaces.Space[Any]
    action_space: spaces.Space[Any]
    render_mode: str | None
    spec: EnvSpec | None

    @property
    def metadata(self) -> dict[str, Any]: ...
    @property
    def remote_spec(self) -> SpecData | None: ...
    @property
    def closed(self) -> bool: ...
    async def start(self) -> Any: ...
    async def close(self) -> None: ...
    def plan_reset(self, seed: Any, options: dict[str, Any] | None) -> Plan[tuple[Any, dict[str, Any]]]: ...
    def plan_step(self, action: Any, /) -> Plan[tuple[Any, Any, Any, Any, dict[str, Any]]]: ...


class AsyncEnvCore(_AsyncCore, Protocol):
    """A single env's async core, as :class:`~rlmesh.sync.SyncEnvShell` drives it."""

    def plan_render(self) -> Plan[Any]: ...
    async def get_wrapper_attr(self, name: str) -> Any: ...
    async def set_wrapper_attr(self, name: str, value: Any) -> None: ...
    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any: ...


class AsyncVectorCore(_AsyncCore, Protocol):
    """A vector env's async core, as :class:`~rlmesh.sync.SyncVectorEnvShell` drives it."""

    single_observation_space: spaces.Space[Any]
    single_action_space: spaces.Space[Any]
    num_envs: int

    def plan_render(self) -> Plan[tuple[Any, ...]]: ...
    @property
    def recovering(self) -> bool: ...  # a step's failed shards wait for recover() (restarts=)
    async def recover(self, result: Any) -> Any: ...
    async def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]: ...
    async def get_attr(self, name: str) -> tuple[Any, ...]: ...
    async def set_attr(self, name: str, values: Any) -> None: ...
