"""What the sync shells drive: the async cores' protocols, and :class:`Exchange`.

An async core is one of the Async* classes (a remote env, a sandbox, a sharded vector env).
The sync shells (:mod:`rlmesh.sync`) are generic over :class:`AsyncEnvCore` and
:class:`AsyncVectorCore`: they never ask which class a core is.

The hot calls (reset, step, render) reach the shells as an :class:`Exchange`: the requests to
write, one per connection, and how their replies become the result. The shell writes them from
its own thread and waits once (:func:`rlmesh._portal.exchange`); an async caller awaits the
core's own ``reset``/``step``/``render``, which do the same on the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec

if TYPE_CHECKING:
    from ..errors import RLMeshError
    from ..protocol import Frame, MessageType, SpecData
    from .env import _AsyncRemoteBase

__all__ = ["AsyncEnvCore", "AsyncVectorCore", "Exchange", "Request"]

T = TypeVar("T", covariant=True)
Request = tuple["_AsyncRemoteBase", "MessageType", Any]
"""A request to write: the one-connection core it goes to, its type and its body."""


class Exchange(Generic[T]):
    """Requests to write at once (before any reply is awaited), and how their replies become ``T``.

    Attributes:
        requests: One per connection, in the order :attr:`finish` takes their reply frames.
        finish: The checked result, from the reply frames (in request order).
        name_error: Names the connection a failure came from (a shard, its lanes); None: as is.
    """

    __slots__ = ("finish", "name_error", "requests")

    def __init__(self, requests: Sequence[Request], finish: Callable[[list[Frame]], T],
                 name_error: Callable[[RLMeshError, int], RLMeshError] | None = None) -> None:
        self.requests = requests
        self.finish = finish
        self.name_error = name_error


class _AsyncCore(Protocol):
    """What every async core has: its spaces, what the server said, its lifecycle."""

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
    def reset_exchange(self, seed: Any, options: dict[str, Any] | None) -> Exchange[tuple[Any, dict[str, Any]]]: ...
    def step_exchange(self, action: Any, /) -> Exchange[tuple[Any, Any, Any, Any, dict[str, Any]]]: ...


class AsyncEnvCore(_AsyncCore, Protocol):
    """A single env's async core, as :class:`~rlmesh.sync.SyncEnvShell` drives it."""

    def render_exchange(self) -> Exchange[Any]: ...
    async def get_wrapper_attr(self, name: str) -> Any: ...
    async def set_wrapper_attr(self, name: str, value: Any) -> None: ...
    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any: ...


class AsyncVectorCore(_AsyncCore, Protocol):
    """A vector env's async core, as :class:`~rlmesh.sync.SyncVectorEnvShell` drives it."""

    single_observation_space: spaces.Space[Any]
    single_action_space: spaces.Space[Any]
    num_envs: int

    def render_exchange(self) -> Exchange[tuple[Any, ...]]: ...
    async def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]: ...
    async def get_attr(self, name: str) -> tuple[Any, ...]: ...
    async def set_attr(self, name: str, values: Any) -> None: ...
