"""Fused batches: one policy call for the lanes of every sandbox waiting for actions.

``batched(fn, lanes=N, fuse=True)``: each sandbox's driver hands its batch of observations to
the :class:`Fuser` and waits; the fuser calls ``fn`` once on the batches of every waiting sandbox
(joined along the lane axis, up to ``max_batch`` lanes) and hands each sandbox its slice of the
actions. This is how a policy served on one GPU is evaluated: one forward pass for all waiting
lanes, not one per sandbox.

A call is made when every sandbox that is stepping is waiting, as a synchronous vector env
steps all its lanes together (a sandbox still starting is not waited for), or when ``max_batch``
lanes are waiting; batches a call had no room for go in the next call at once. A hung sandbox
holds the others up until its own timeout (``episode_timeout``, else ``request_timeout``) ends
it, and then they go on without it. Only batches of equal observation spaces are joined (the
tasks of a run may differ); the others go in the next call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from .policies import Acting, Episode, maybe_await

__all__ = ["Fuser", "join_batches", "slice_batch"]


@dataclass
class _Waiting:
    space: spaces.Space[Any]  # the single observation space
    obs: Any
    lanes: int
    episodes: list[Episode | None]
    future: asyncio.Future[Any]
    passed_over: bool = False  # a call had no room for it: it goes in the next one at once


def join_batches(space: spaces.Space[Any], batches: list[Any]) -> Any:
    """Batches of ``space`` (as a vector env returns them), joined along the lane axis: arrays are
    concatenated, a Dict or Tuple space's parts joined one by one, and the tuples of lanes that
    Text, Graph, Sequence and custom spaces batch as are chained."""
    if len(batches) == 1:
        return batches[0]
    if isinstance(space, spaces.Dict):
        return {key: join_batches(sub, [b[key] for b in batches]) for key, sub in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(join_batches(sub, [b[i] for b in batches]) for i, sub in enumerate(space.spaces))
    if all(isinstance(b, np.ndarray) for b in batches):
        return np.concatenate(batches)
    return tuple(item for b in batches for item in b)


def slice_batch(actions: Any, a: int, b: int) -> Any:
    """Lanes ``a:b`` of a batch of actions (an array, or a dict or tuple of them)."""
    if isinstance(actions, dict):
        return {key: slice_batch(value, a, b) for key, value in actions.items()}
    if isinstance(actions, tuple) and actions and all(isinstance(v, (np.ndarray, dict)) for v in actions):
        return tuple(slice_batch(value, a, b) for value in actions)
    return actions[a:b]


class Fuser:
    """Gathers the batches of waiting sandboxes and calls the policy once on them.

    Args:
        acting: The batched policy.
        max_batch: Lanes per call at most (None: every waiting lane).
        on_call: Called with the lanes of each policy call (counts them).
    """

    def __init__(self, acting: Acting, max_batch: int | None, on_call: Callable[[int], None]) -> None:
        self.acting = acting
        self.max_batch = max_batch
        self.on_call = on_call
        self.stepping = 0  # sandboxes in their drive loop
        self._waiting: list[_Waiting] = []
        self._in_flight: list[_Waiting] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def enter(self) -> None:
        """A sandbox began to step."""
        self.stepping += 1
        self._changed.set()

    def leave(self) -> None:
        """A sandbox stopped stepping (its episodes ended, or it failed)."""
        self.stepping -= 1
        self._changed.set()

    async def act(self, space: spaces.Space[Any], obs: Any, lanes: int, episodes: list[Episode | None]) -> Any:
        """This sandbox's actions, from the next fused call."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._serve())
        future: asyncio.Future[Any] = loop.create_future()
        self._waiting.append(_Waiting(space, obs, lanes, episodes, future))
        self._changed.set()
        return await future

    async def close(self) -> None:
        """Stop serving; waiting sandboxes are cancelled (the run is ending)."""
        task, self._task = self._task, None
        pending = [*self._waiting, *self._in_flight]
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for w in pending:
            w.future.cancel()
        self._waiting.clear()

    def _ready(self) -> bool:
        if not self._waiting:
            return False
        if len(self._waiting) >= self.stepping or self._waiting[0].passed_over:
            return True
        return self.max_batch is not None and sum(w.lanes for w in self._waiting) >= self.max_batch

    async def _serve(self) -> None:
        while True:
            while not self._ready():
                self._changed.clear()
                await self._changed.wait()
            group = self._in_flight = self._take()
            try:
                actions = await self._call(group)
            except Exception as exc:  # the policy's error ends the run: every sandbox of the call raises it
                for w in group:
                    if not w.future.done():
                        w.future.set_exception(exc)
                continue
            finally:
                self._in_flight = []
            a = 0
            for w in group:
                if not w.future.done():
                    w.future.set_result(slice_batch(actions, a, a + w.lanes) if len(group) > 1 else actions)
                a += w.lanes

    def _take(self) -> list[_Waiting]:
        """The waiting batches of the first one's space, oldest first, up to max_batch lanes."""
        first = self._waiting[0]
        group: list[_Waiting] = []
        rest: list[_Waiting] = []
        lanes = 0
        for w in self._waiting:
            fits = self.max_batch is None or not group or lanes + w.lanes <= self.max_batch
            if fits and (w is first or w.space == first.space):
                group.append(w)
                lanes += w.lanes
            else:
                w.passed_over = True
                rest.append(w)
        self._waiting = rest
        return group

    async def _call(self, group: list[_Waiting]) -> Any:
        acting = self.acting
        assert acting.fn is not None
        obs = join_batches(group[0].space, [w.obs for w in group])
        self.on_call(sum(w.lanes for w in group))
        if acting.with_episode:
            return await maybe_await(acting.fn(obs, [e for w in group for e in w.episodes]))
        return await maybe_await(acting.fn(obs))
