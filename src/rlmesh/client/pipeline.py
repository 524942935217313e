"""The hot path: every hot call is *plan*, *send*, *finish*, written once.

* **plan** (the env's ``plan_step``/``plan_reset``/``plan_render``): split the actions by lane
  bounds and build the K requests, one per connection; K = 1 for a single env or one shard.
* **send**: write every request, then wait for every reply. On the loop (:func:`send`, here), or
  on a sync caller's own thread (:func:`rlmesh.client.caller_thread.send_plan`): the only place
  the two differ.
* **finish** (:attr:`Plan.finish`): decode each reply frame straight into the batch the caller
  gets, and name the shard of a failure.

A split step (``step_async``/``step_wait``) is :func:`write` now and :func:`wait` later.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from ..errors import RLMeshError, TransportError

if TYPE_CHECKING:
    from ..protocol import Frame, MessageType
    from .connection import ClientConnection, PendingReply
    from .env import _AsyncRemoteBase

__all__ = ["Plan", "Request", "Written", "drop", "send", "wait", "write"]

T = TypeVar("T")
Request = tuple["_AsyncRemoteBase", "MessageType", Any]
"""A request to write: the one-connection core it goes to, its type and its body."""


class Plan(Generic[T]):
    """A planned hot call: the requests to write at once, and how their replies become ``T``.

    Attributes:
        requests: One per connection, in the order :attr:`finish` takes their reply frames.
        finish: The checked result from the reply frames (in request order); it frees every
            shared region the frames hold, and names the shard of a failure.
        name: Names the connection of a failure to send or receive request ``i`` (a shard and its
            lanes); None: the error as it is.
        partial: Where set, failures to receive do not raise at once: every reply is awaited,
            and the result is ``partial(frames, failures)`` (None frames where request ``i``
            failed with ``failures[i]``, explained and named), which frees the frames and may
            raise (a vector env that restarts shards: :mod:`rlmesh.client.restarts`).
    """

    __slots__ = ("finish", "name", "partial", "requests")

    def __init__(self, requests: Sequence[Request], finish: Callable[[list[Frame]], T],
                 name: Callable[[RLMeshError, int], RLMeshError] | None = None,
                 partial: Callable[[list[Frame | None], dict[int, RLMeshError]], T] | None = None) -> None:
        self.requests = requests
        self.finish = finish
        self.name = name
        self.partial = partial

    def named(self, exc: RLMeshError, i: int) -> RLMeshError:
        """``exc``, naming the connection of request ``i`` where the plan says how."""
        return exc if self.name is None else self.name(exc, i)


class Written(NamedTuple, Generic[T]):
    """A plan whose requests are written, their replies not yet awaited."""

    plan: Plan[T]
    pending: list[tuple[ClientConnection, PendingReply]]


async def send(plan: Plan[T]) -> T:
    """Write the plan's requests, wait for every reply, and return its result (on the loop)."""
    return await wait(await write(plan))


async def write(plan: Plan[T]) -> Written[T]:
    """Write every request of ``plan`` now (bodies encoded before this returns).

    Raises:
        RLMeshError: A request could not be written (named; those already written are dropped).
    """
    pending: list[tuple[ClientConnection, PendingReply]] = []
    try:
        for i, (core, mtype, body) in enumerate(plan.requests):
            conn = core.connection
            try:
                pending.append((conn, conn.send_request(mtype, body, core.request_timeout)))
            except RLMeshError as exc:
                raise plan.named(await _explained(core, exc), i) from None
    except BaseException:
        _drop(pending)
        raise
    return Written(plan, pending)


async def wait(written: Written[T]) -> T:
    """The result of a written plan: every reply in request order, then its ``finish``.

    Raises:
        RLMeshError: The first failure in request order (named); the rest are dropped.
    """
    plan, pending = written
    if plan.partial is not None:
        return await _wait_all(written, plan.partial)
    frames: list[Frame] = []
    try:
        for i, (conn, one) in enumerate(pending):
            try:
                frames.append(await conn.reply(one))
            except RLMeshError as exc:
                raise plan.named(await _explained(plan.requests[i][0], exc), i) from None
    except BaseException:
        _drop(pending[len(frames) + 1:])
        for (conn, _), frame in zip(pending, frames, strict=False):
            conn.release_region(frame.request_id)
        raise
    return plan.finish(frames)


async def _wait_all(written: Written[T], partial: Callable[[list[Frame | None], dict[int, RLMeshError]], T]) -> T:
    # Every reply, failures included (see Plan.partial).
    plan, pending = written
    frames: list[Frame | None] = []
    failures: dict[int, RLMeshError] = {}
    try:
        for i, (conn, one) in enumerate(pending):
            try:
                frames.append(await conn.reply(one))
            except RLMeshError as exc:
                frames.append(None)
                failures[i] = plan.named(await _explained(plan.requests[i][0], exc), i)
    except BaseException:
        _drop(pending[len(frames) + 1:])
        for (conn, _), frame in zip(pending, frames, strict=False):
            if frame is not None:
                conn.release_region(frame.request_id)
        raise
    if not failures:
        return plan.finish([f for f in frames if f is not None])
    return partial(frames, failures)


def drop(written: Written[Any]) -> None:
    """Forget a written plan whose replies will not be awaited."""
    _drop(written.pending)


def _drop(pending: list[tuple[ClientConnection, PendingReply]]) -> None:
    for conn, one in pending:
        conn.drop(one)


async def _explained(core: _AsyncRemoteBase, exc: RLMeshError) -> RLMeshError:
    # A lost connection, explained by its core where it can (a sandbox: why its container exited).
    if not isinstance(exc, TransportError):
        return exc
    explained = await core.explain(exc)
    if explained is not exc and isinstance(explained, RLMeshError):
        explained.__cause__ = exc
        return explained
    return exc
