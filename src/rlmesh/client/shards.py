"""One vector env over one or more shards, each with its own connection and process.

:class:`AsyncShardedVectorEnv` is what the public vector classes are:
:class:`~rlmesh.client.vector.AsyncRemoteVectorEnv` (shards: servers) and
:class:`~rlmesh.sandbox.vector.AsyncSandboxVectorEnv` (shards: sandboxes). How lanes split
and merge is :mod:`rlmesh.client.lanes` (pure functions over the lane bounds).

``N`` lanes split over ``K`` shards as evenly as possible, lanes in order. The semantics are
those of one in-process ``SyncVectorEnv`` of ``N`` lanes: ``reset(seed=s)`` seeds lane ``i``
with ``s + i`` (shard ``j`` is reset with ``s`` plus its first lane), ``options["reset_mask"]``
is split per shard, infos are merged with Gymnasium's ``_key`` masks, and each shard applies
the same autoreset mode. Requests go to every shard at once and the replies are gathered: no
shard waits for another's reply before its request is sent.

A shard that fails raises its own error (its type is kept: ``SandboxExitedError``,
``RemoteEnvError[...]``), with ``shard`` and ``lanes`` attributes and a note naming them.

Every hot call is :mod:`~rlmesh.client.pipeline`'s plan, send, finish: ``plan_step``,
``plan_reset`` and ``plan_render`` build one request per shard, and the finish decodes each
reply straight into the batch returned (one shard is the case K = 1). The sync shell sends the
same plans from its own thread.

EnvPool-style stepping: ``await step_async(actions)`` / ``await step_wait()`` split a step in
two, and ``send(actions, env_ids)`` / ``recv()`` step whole shards and return the first to
finish (at least ``batch_size`` lanes), with ``info["env_id"]``. See ``docs/scale-out.md``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from ..errors import EnvClosedError, InvalidArgumentError, ProtocolError, RLMeshError
from ..protocol import Frame, MessageType, SpecData
from .lanes import (
    batch_from_parts,
    bounds_of,
    iterate_lanes,
    join_lanes,
    lanes_of,
    merge_infos,
    merge_infos_into,
    split_actions,
    split_reset,
)
from .pipeline import Plan, Written, drop, send, wait, write
from .remote_shard import RemoteShard
from .restarts import Restarts, set_lanes

__all__ = ["AsyncShardedVectorEnv"]


class AsyncShardedVectorEnv:
    """A vector env of ``N`` lanes over one or more shards, stepped concurrently.

    Args:
        shards: The shards (:class:`~rlmesh.client.env.RemoteShard`, sandboxes among them), not
            yet started; their lanes, in order, are this env's lanes. A subclass may leave them to
            :meth:`_open_shards` (Ray places them as they start).
    """

    def __init__(self, shards: Sequence[RemoteShard]) -> None:
        self.shards: list[RemoteShard] = list(shards)
        self._closed = False
        self._pending: Written[Any] | None = None  # a step written by step_async, until step_wait
        self._inflight: dict[asyncio.Future[Any], int] = {}  # send()'s shards, until recv
        self.batch_size: int | None = None
        self.num_envs = 0
        self.bounds: list[tuple[int, int]] = []
        # Each shard's last observation, for a masked reset that spares it: (the batch returned to
        # the caller, first lane, end) — the caller's copy, never a view of a shared region.
        self._kept: list[tuple[Any, int, int] | None] = [None] * len(self.shards)
        # Restarts (rlmesh.client.restarts): the budget and history, the shards of a step that
        # failed (replaced by recover()), and NEXT_STEP's pending reset results of replaced shards.
        self._restarts = Restarts()
        self._recovering: dict[int, RLMeshError] = {}
        self._fresh: dict[int, tuple[Any, dict[str, Any]]] = {}
        self.spec: EnvSpec | None = None  # the first shard's, once started
        self.remote_spec: SpecData | None = None
        self.render_mode: str | None = None
        self.metadata: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> AsyncShardedVectorEnv:
        """Start (or connect) every shard at once; returns ``self``. A failure closes them all."""
        if self._closed:
            raise EnvClosedError("this env was closed; create a new one")
        try:
            self.shards = await self._open_shards()
            if not self.shards:
                raise InvalidArgumentError("a sharded vector env needs at least one shard")
            self._kept = [None] * len(self.shards)
            await self._each(lambda shard: shard.start())
        except BaseException:
            await asyncio.shield(self.close())
            raise
        first = self.shards[0]
        for j, shard in enumerate(self.shards[1:], 1):
            if shard.single_observation_space != first.single_observation_space or (
                shard.single_action_space != first.single_action_space
            ):
                await self.close()
                raise ProtocolError(f"shard {j} serves other spaces than shard 0; shards must serve the same env")
        sizes = [shard.num_envs for shard in self.shards]
        self.num_envs = sum(sizes)
        self.bounds = bounds_of(sizes)
        self.single_observation_space = first.single_observation_space
        self.single_action_space = first.single_action_space
        if len(self.shards) == 1:  # the server's own batched spaces
            self.observation_space, self.action_space = first.observation_space, first.action_space
        else:  # as SyncVectorEnv does: batched from the first lane's spaces (their generator state too)
            self.observation_space = batch_space(self.single_observation_space, self.num_envs)
            self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = dict(first.metadata)
        self.render_mode = first.render_mode
        self.spec = first.spec
        self.remote_spec = first.remote_spec
        return self

    async def connect(self) -> Any:
        """The same as :meth:`start`."""
        return await self.start()

    async def _open_shards(self) -> list[RemoteShard]:
        """The shards to start (those given, unless a subclass places them itself)."""
        return self.shards

    @property
    def connection(self) -> Any:
        """The one shard's connection (see :class:`~rlmesh.client.connection.ClientConnection`).

        Raises:
            InvalidArgumentError: There are several shards: ``shards[j].connection`` is shard j's.
        """
        if len(self.shards) != 1:
            raise InvalidArgumentError(f"this env has {len(self.shards)} shards, each with its own connection: "
                                       "use shards[j].connection")
        return self.shards[0].connection

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def autoreset_mode(self) -> AutoresetMode:
        """The shards' autoreset mode."""
        mode: AutoresetMode = self.metadata["autoreset_mode"]
        return mode

    @property
    def container_ids(self) -> list[str | None]:
        """Each shard's container id (sandbox shards), else None."""
        return [getattr(shard, "container_id", None) for shard in self.shards]

    async def close(self) -> None:
        """Close every shard. Idempotent."""
        self._closed = True
        pending, self._pending = self._pending, None
        if pending is not None:
            drop(pending)
        inflight, self._inflight = list(self._inflight), {}
        for task in inflight:
            task.cancel()  # started (send yields once), so each forgets its request
        await asyncio.gather(*inflight, return_exceptions=True)
        self._kept = [None] * len(self.shards)
        await asyncio.gather(*(shard.close() for shard in self.shards), return_exceptions=True)

    def __repr__(self) -> str:
        spec_id = self.spec.id if self.spec is not None else "?"
        where = self.shards[0].address if len(self.shards) == 1 else f"{len(self.shards)} shards"
        return f"<{type(self).__name__} {spec_id} at {where}>"

    async def __aenter__(self) -> AsyncShardedVectorEnv:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the hot calls: plan (here), send (rlmesh.client.pipeline), finish (here) --
    def plan_step(self, actions: Any) -> Plan[tuple[Any, Any, Any, Any, dict[str, Any]]]:
        """A step: each shard's part of ``actions``, and the merge of their replies."""
        self._check_can_send()
        parts = split_actions(self.action_space, self.single_action_space, self.bounds, actions)
        if self._fresh:
            return self._plan_step_after_restart(parts)
        requests = [(shard, MessageType.STEP, shard.step_body(part)) for shard, part in zip(self.shards, parts, strict=True)]
        return Plan(requests, self._finish_step, self.named, self._partial_step if self._restarts.budget else None)

    def _plan_step_after_restart(self, parts: list[Any]) -> Plan[tuple[Any, Any, Any, Any, dict[str, Any]]]:
        # NEXT_STEP after a restart: a replaced shard's lanes return its reset (as an autoreset
        # step does: reward 0, not done), and only the other shards are stepped.
        stepped = [j for j in range(len(self.shards)) if j not in self._fresh]
        requests = [(self.shards[j], MessageType.STEP, self.shards[j].step_body(parts[j])) for j in stepped]

        def partial(frames: list[Frame | None], failures: dict[int, RLMeshError]) -> Any:
            fresh, self._fresh = self._fresh, {}
            by_shard: dict[int, Frame | None] = dict(zip(stepped, frames, strict=True))
            return self._merge_partial(by_shard, {stepped[i]: exc for i, exc in failures.items()}, fresh)

        def finish(frames: list[Frame]) -> Any:
            return partial(list(frames), {})

        return Plan(requests, finish, lambda exc, i: self.named(exc, stepped[i]),
                    partial if self._restarts.budget else None)

    def _partial_step(self, frames: list[Frame | None],
                      failures: dict[int, RLMeshError]) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """A step some shards of which failed (Plan.partial): their lanes cut short, if every
        failure is one this env restarts for and its budget allows; else the first failure."""
        return self._merge_partial(dict(enumerate(frames)), failures, {})

    def _merge_partial(self, frames: dict[int, Frame | None], failures: dict[int, RLMeshError],
                       fresh: dict[int, tuple[Any, dict[str, Any]]]) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        # Every shard's part: its reply decoded, its pending reset (fresh), or cut short (failed;
        # an env's own exception arrives as a reply, and fails here when it is decoded).
        failures = dict(failures)
        try:
            decoded: dict[int, tuple[Any, ...]] = {}
            owned = not failures and not fresh
            for j, frame in frames.items():
                if frame is None or j in fresh:
                    continue
                try:
                    decoded[j] = self.shards[j].decode_step(frame, views=True)
                except RLMeshError as decode_error:
                    failures[j] = self.named(decode_error, j)
                owned = owned and frame.type is MessageType.STEP
            self._check_restartable(failures)
            results: list[tuple[Any, ...]] = []
            for j in range(len(self.shards)):
                if j in fresh:
                    results.append(_reset_step(self._size(j), fresh[j]))
                elif j in failures:
                    results.append(self._cut_short(j))
                else:
                    results.append(decoded[j])
            merged = self._merge_step(results, self.bounds, owned=owned and not failures)
        finally:
            for j, frame in frames.items():
                if frame is not None:
                    self.shards[j].release_region(frame.request_id)
        self._recovering = failures
        return merged

    def _check_restartable(self, failures: dict[int, RLMeshError]) -> None:
        """Raise the first failure unless every one is one to restart for, of a shard whose lanes have
        an observation to cut short with, and the budget has a restart for each."""
        for j, failure in sorted(failures.items()):
            if not self._restarts.qualifies(failure) or self._kept[j] is None:
                raise failure
            if len(failures) > self._restarts.left():
                raise self._restarts.exhausted(failure)

    def _cut_short(self, j: int) -> tuple[Any, ...]:
        # A failed shard's lanes in the step that failed: the last observation, reward 0, truncated.
        kept = self._kept[j]
        assert kept is not None
        batch, a, b = kept
        n = b - a
        return (lanes_of(self.single_observation_space, batch, a, b), np.zeros(n), np.zeros(n, bool),
                np.ones(n, bool), {})

    async def recover(self, result: tuple[Any, Any, Any, Any, dict[str, Any]]) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Replace the shards that failed in the step ``result`` comes from (see
        :mod:`rlmesh.client.restarts`), mark their lanes in its info, and return it.

        Raises:
            RLMeshError: A replacement could not start (with the restart history attached).
        """
        failed, self._recovering = self._recovering, {}
        obs, _, _, _, info = result
        for j, exc in sorted(failed.items()):
            obs = await self._restart_lanes(j, exc, obs, info, *self.bounds[j], self.num_envs)
        for j, (ka, kb) in enumerate(self.bounds):
            self._kept[j] = (obs, ka, kb)
        return (obs, *result[1:4], info)

    async def _restart_lanes(self, j: int, exc: RLMeshError, obs: Any, info: dict[str, Any], a: int, b: int,
                             n: int) -> Any:
        """Replace shard ``j`` (see :meth:`_restart`), whose lanes are lanes ``a..b-1`` of ``obs`` and
        ``info`` (``n`` lanes in all): mark them in ``info``, and return ``obs`` as the autoreset mode
        has it (NEXT_STEP: as it is, the reset kept for the next step; SAME_STEP: the reset in those
        lanes, ``info["final_obs"]`` the last observation; DISABLED: as it is)."""
        entry, reset = await self._restart(j, exc)
        set_lanes(info, "rlmesh_restart", n, a, b, [entry] * (b - a))
        if reset is None:
            return obs
        if self.autoreset_mode is AutoresetMode.NEXT_STEP:
            self._fresh[j] = reset
            return obs
        space = self.single_observation_space
        set_lanes(info, "final_obs", n, a, b, iterate_lanes(space, lanes_of(space, obs, a, b), b - a))
        merge_infos_into(info, n, a, b, reset[1])
        parts = [(0, a, lanes_of(space, obs, 0, a)), (a, b, reset[0]), (b, n, lanes_of(space, obs, b, n))]
        return batch_from_parts(space, n, [p for p in parts if p[1] > p[0]], owned=False)

    async def _restart(self, j: int, exc: RLMeshError) -> tuple[dict[str, Any], tuple[Any, dict[str, Any]] | None]:
        """Record shard ``j``'s failure, replace it, and reset it with its lanes' restart seeds
        (not under DISABLED autoreset); returns the record and the reset (or None).

        Raises:
            RLMeshError: The replacement could not start or reset (with the history attached).
        """
        a, b = self.bounds[j]
        entry = self._restarts.record(j, (a, b), exc)
        try:
            await self._replace_shard(j)
            if self.autoreset_mode is AutoresetMode.DISABLED:
                return entry, None  # the caller resets the lanes, as after any truncation
            seeds = self._restarts.restart_seeds(a, b, self._restarts.counts[j])
            shard = self.shards[j]
            reset: tuple[Any, dict[str, Any]] = await send(Plan(
                [(shard, MessageType.RESET, shard.reset_body(seeds, None))], functools.partial(_decode_first_reset, shard)))
        except RLMeshError as start_failure:
            raise self._restarts.failed_restart(self.named(start_failure, j), j) from exc
        return entry, reset

    async def _restart_in_recv(self, j: int, exc: RLMeshError) -> tuple[Any, ...]:
        """send/recv: shard ``j``'s part of a recv whose step failed, its lanes cut short (see
        :meth:`recover`), the shard replaced."""
        self._check_restartable({j: exc})
        obs, rewards, terms, truncs, info = self._cut_short(j)
        n = self._size(j)
        obs = await self._restart_lanes(j, exc, obs, info, 0, n, n)
        return obs, rewards, terms, truncs, info

    @property
    def recovering(self) -> bool:
        """Whether the last step's failed shards wait for :meth:`recover` (``restarts=``)."""
        return bool(self._recovering)

    async def _replace_shard(self, j: int) -> None:
        """Replace shard ``j`` with a started one like it (a sandbox env does; others cannot)."""
        raise InvalidArgumentError(f"{type(self).__name__} cannot replace a shard")

    @property
    def restart_history(self) -> list[dict[str, Any]]:
        """Each shard restart: ``time``, ``shard``, ``lanes``, ``restart`` (its number),
        ``shard_restart`` (the shard's own count) and ``error`` (``type``, ``message``,
        ``exit_code``, ``killed_by``, ``log_tail``)."""
        return list(self._restarts.history)

    def _finish_step(self, frames: list[Frame]) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        # Arrays in a shard's region are read as views, copied once into the batch, and the
        # region freed; arrays that came in a frame are the batch itself when one shard has all.
        if self._restarts.budget:  # an env's exception may be one to restart its shard for
            return self._merge_partial(dict(enumerate(frames)), {}, {})
        shards = self.shards
        results = []
        owned = True
        try:
            for j, frame in enumerate(frames):
                try:
                    results.append(shards[j].decode_step(frame, views=True))
                except RLMeshError as exc:
                    raise self.named(exc, j) from None
                owned = owned and frame.type is MessageType.STEP
            return self._merge_step(results, self.bounds, owned)
        finally:
            for shard, frame in zip(shards, frames, strict=True):
                shard.release_region(frame.request_id)

    def _merge_step(self, results: list[tuple[Any, ...]], bounds: list[tuple[int, int]], owned: bool,
                    shard_ids: Sequence[int] | None = None) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        # ``bounds``: where each result's lanes go in the batch (every lane, or what recv returns).
        n = bounds[-1][1]
        obs = batch_from_parts(self.single_observation_space, n, [(a, b, r[0]) for (a, b), r in zip(bounds, results, strict=True)],
                               owned)
        for i, (a, b) in enumerate(bounds):
            self._kept[i if shard_ids is None else shard_ids[i]] = (obs, a, b)
        rewards = join_lanes([r[1] for r in results], owned)
        terms = join_lanes([r[2] for r in results], owned)
        truncs = join_lanes([r[3] for r in results], owned)
        return obs, rewards, terms, truncs, merge_infos(n, [(a, b, r[4]) for (a, b), r in zip(bounds, results, strict=True)])

    def plan_reset(self, seed: Any, options: dict[str, Any] | None) -> Plan[tuple[Any, dict[str, Any]]]:
        """A reset: the RESET request of each shard that has a lane to reset, and the merge."""
        self._check_can_send()
        parts = split_reset(self.bounds, seed, options)
        shard_ids = [j for j, _, _ in parts]
        if self._restarts.budget:
            self._restarts.note_reset(self.num_envs, seed, options)
        for j in shard_ids:
            self._fresh.pop(j, None)  # a reset replaces a replaced shard's pending reset
        requests = [(self.shards[j], MessageType.RESET, self.shards[j].reset_body(s, o)) for j, s, o in parts]

        def finish(frames: list[Frame]) -> tuple[Any, dict[str, Any]]:
            reset: dict[int, tuple[Any, dict[str, Any]]] = {}
            for j, frame in zip(shard_ids, frames, strict=True):
                try:
                    reset[j] = self.shards[j].decode_reset(frame)
                except RLMeshError as exc:
                    raise self.named(exc, j) from None
            return self._merge_reset(reset)

        return Plan(requests, finish, lambda exc, i: self.named(exc, shard_ids[i]))

    def _merge_reset(self, reset: dict[int, tuple[Any, dict[str, Any]]]) -> tuple[Any, dict[str, Any]]:
        # A masked reset may spare whole shards: their lanes keep the observation the caller was
        # given (as in SyncVectorEnv); their infos add nothing.
        parts = []
        for j, (a, b) in enumerate(self.bounds):
            if j in reset:
                parts.append((a, b, reset[j][0]))
                continue
            kept = self._kept[j]
            if kept is None:
                raise InvalidArgumentError("reset every lane once before a masked reset")
            batch, ka, kb = kept
            parts.append((a, b, lanes_of(self.single_observation_space, batch, ka, kb)))
        obs = batch_from_parts(self.single_observation_space, self.num_envs, parts, owned=True)
        for j, (a, b) in enumerate(self.bounds):
            self._kept[j] = (obs, a, b)
        return obs, merge_infos(self.num_envs, [(*self.bounds[j], info) for j, (_, info) in reset.items()])

    def plan_render(self) -> Plan[tuple[Any, ...]]:
        """A render: every shard's frames, in lane order."""
        self._check_open()

        def finish(frames: list[Frame]) -> tuple[Any, ...]:
            values: list[Any] = []
            for j, frame in enumerate(frames):
                try:
                    value = self.shards[j].decode_value(frame, MessageType.RENDER)
                except RLMeshError as exc:
                    raise self.named(exc, j) from None
                values.extend([None] * self._size(j) if value is None else value)
            return tuple(values)

        return Plan([(shard, MessageType.RENDER, None) for shard in self.shards], finish, self.named)

    # -- the vector API ------------------------------------------------------
    async def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Reset every lane (or those in ``options["reset_mask"]``), as ``VectorEnv.reset``."""
        return await send(self.plan_reset(seed, options))

    async def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step every lane, as ``VectorEnv.step``: every shard at once."""
        result = await send(self.plan_step(actions))
        return await self.recover(result) if self._recovering else result

    async def render(self) -> tuple[Any, ...]:
        """Every lane's frame."""
        return await send(self.plan_render())

    async def step_async(self, actions: Any) -> None:
        """Send a step and return once it is sent (the actions are encoded, their buffer free
        again); :meth:`step_wait` returns its result."""
        self._pending = await write(self.plan_step(actions))

    async def step_wait(self) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """The result of the step sent by :meth:`step_async`."""
        self._check_open()
        written, self._pending = self._pending, None
        if written is None:
            raise InvalidArgumentError("step_wait without step_async")
        result = await wait(written)
        return await self.recover(result) if self._recovering else result

    async def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call ``name`` on every lane, as ``VectorEnv.call``."""
        results = await self._gather([(j, s.call(name, *args, **kwargs)) for j, s in enumerate(self.shards)])
        return tuple(v for _, values in results for v in values)

    async def get_attr(self, name: str) -> tuple[Any, ...]:
        """Every lane's attribute ``name``."""
        results = await self._gather([(j, s.get_attr(name)) for j, s in enumerate(self.shards)])
        return tuple(v for _, values in results for v in values)

    async def set_attr(self, name: str, values: Any) -> None:
        """Set ``name`` on every lane (one value, or one per lane)."""
        if isinstance(values, (list, tuple)):
            if len(values) != self.num_envs:
                raise InvalidArgumentError(f"values must have length num_envs={self.num_envs}, got {len(values)}")
            parts = [list(values[a:b]) for a, b in self.bounds]
        else:
            parts = [values] * len(self.shards)
        await self._gather([(j, s.set_attr(name, parts[j])) for j, s in enumerate(self.shards)])

    # -- EnvPool-style: whole shards, whichever finish first --------------------
    async def send(self, actions: Any, env_ids: Sequence[int] | None = None) -> None:
        """Step the shards that hold ``env_ids`` (whole shards; all lanes when None).

        ``actions`` has one action per lane of those shards, in lane order.
        """
        self._check_open()
        if self._pending is not None:
            raise InvalidArgumentError("a step was sent whose result was not received: call step_wait first")
        shard_ids = self._shards_of(env_ids)
        busy = set(self._inflight.values()) & set(shard_ids)
        if busy:
            raise InvalidArgumentError(f"shard(s) {sorted(busy)} were sent a step whose result was not received")
        sizes = [self._size(j) for j in shard_ids]
        space = self.action_space if len(shard_ids) == len(self.shards) else batch_space(self.single_action_space, sum(sizes))
        parts = split_actions(space, self.single_action_space, bounds_of(sizes), actions)
        written = []
        fresh = [j for j in shard_ids if j in self._fresh]
        try:
            for j, part in zip(shard_ids, parts, strict=True):
                if j not in self._fresh:
                    written.append((j, await write(self._plan_shard_step(j, part))))
        except BaseException:
            for _, one in written:
                drop(one)
            raise
        for j, one in written:  # sent now; recv collects the results
            self._inflight[asyncio.ensure_future(wait(one))] = j
        for j in fresh:  # NEXT_STEP after a restart: the shard's reset, as an autoreset step
            done = asyncio.get_running_loop().create_future()
            done.set_result(_reset_step(self._size(j), self._fresh.pop(j)))
            self._inflight[done] = j
        await asyncio.sleep(0)  # the tasks start (and wait for their replies): close() can cancel them

    def _plan_shard_step(self, j: int, actions: Any) -> Plan[tuple[Any, Any, Any, Any, dict[str, Any]]]:
        # One shard's step, decoded on its own (send/recv gathers whole shards as they finish).
        shard = self.shards[j]
        return Plan([(shard, MessageType.STEP, shard.step_body(actions))], lambda frames: shard.decode_step(frames[0]),
                    lambda exc, _: self.named(exc, j))

    async def recv(self) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Results of the first shards to finish, at least ``batch_size`` lanes (all in flight when
        ``batch_size`` is None); ``info["env_id"]`` says which lanes, in the order returned."""
        self._check_open()
        if not self._inflight:
            raise InvalidArgumentError("recv without send")
        want = self.batch_size or sum(self._size(j) for j in self._inflight.values())
        done: list[tuple[int, Any]] = []
        while sum(self._size(j) for j, _ in done) < want and self._inflight:
            finished, _ = await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(finished, key=lambda t: self._inflight[t]):
                j = self._inflight.pop(task)
                try:
                    done.append((j, task.result()))
                except RLMeshError as exc:
                    if not self._restarts.budget:
                        raise
                    done.append((j, await self._restart_in_recv(j, exc)))
        shard_ids = [j for j, _ in done]
        result = self._merge_step([r for _, r in done], bounds_of([self._size(j) for j in shard_ids]), True, shard_ids)
        result[4]["env_id"] = np.concatenate([np.arange(*self.bounds[j]) for j in shard_ids])
        return result

    def _shards_of(self, env_ids: Sequence[int] | None) -> list[int]:
        if env_ids is None:
            return list(range(len(self.shards)))
        wanted = sorted({int(i) for i in env_ids})
        shard_ids = [j for j, (a, b) in enumerate(self.bounds) if any(a <= i < b for i in wanted)]
        covered = [i for j in shard_ids for i in range(*self.bounds[j])]
        if covered != wanted:
            if len(self.shards) == 1:
                raise InvalidArgumentError(
                    f"env_ids must be all {self.num_envs} lanes: one server steps its lanes together "
                    "(split the lanes over several containers with shards=K to step part of them)")
            raise InvalidArgumentError(f"send steps whole shards; env_ids must be the lanes of whole shards: {self.bounds}")
        return shard_ids

    def _size(self, j: int) -> int:
        a, b = self.bounds[j]
        return b - a

    def _check_open(self) -> None:
        if self._closed:
            raise EnvClosedError("this env is closed")
        if not self.bounds:
            raise EnvClosedError("this env is not started: use `async with ...`, or `await envs.start()` first")

    def _check_can_send(self) -> None:
        # As Gymnasium's AsyncVectorEnv: one step at a time (step() too, while one is split).
        self._check_open()
        if self._pending is not None:
            raise InvalidArgumentError("a step was sent whose result was not received: call step_wait (or recv) first")
        if self._inflight:
            raise InvalidArgumentError("steps were sent with send() whose results were not received: call recv first")

    async def _each(self, make: Any) -> list[Any]:
        return await self._gather([(j, make(shard)) for j, shard in enumerate(self.shards)])

    async def _gather(self, calls: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
        # Every shard's request is sent before any reply is awaited.
        results = await asyncio.gather(*(c for _, c in calls), return_exceptions=True)
        for (j, _), result in zip(calls, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, RLMeshError):
                    raise self.named(result, j) from None
                raise result
        return [(j, result) for (j, _), result in zip(calls, results, strict=True)]

    def named(self, exc: RLMeshError, j: int) -> RLMeshError:
        """``exc``, with the shard ``j`` and its lanes named (attributes and a note); an env of one
        shard names none (its errors are its connection's)."""
        if len(self.shards) == 1:
            return exc
        if j < len(self.bounds):
            a, b = self.bounds[j]
            exc.shard, exc.lanes = j, (a, b)
            note = f"(in shard {j}, lanes {a}..{b - 1})"
        else:  # it failed before its lanes were known (connecting)
            exc.shard, exc.lanes = j, None
            note = f"(in shard {j})"
        if note not in getattr(exc, "__notes__", ()):
            exc.add_note(note)
        return exc


def _decode_first_reset(shard: RemoteShard, frames: list[Frame]) -> tuple[Any, dict[str, Any]]:
    return shard.decode_reset(frames[0])


def _reset_step(n: int, reset: tuple[Any, dict[str, Any]]) -> tuple[Any, ...]:
    # A replaced shard's lanes in the step after the restart (NEXT_STEP): its reset, as an autoreset
    # step returns one (reward 0, not done).
    obs, info = reset
    return obs, np.zeros(n), np.zeros(n, bool), np.zeros(n, bool), info
