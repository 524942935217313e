"""One vector env over one or more shards, each with its own connection and process.

:class:`AsyncShardedVectorEnv` is what the public vector classes are:
:class:`~rlmesh.client.vector.AsyncRemoteVectorEnv` (shards: servers) and
:class:`~rlmesh.sandbox.vector.AsyncSandboxVectorEnv` (shards: sandboxes). With one shard,
every call is the shard's own; the rest of this docstring is about several. (Over 500 lines,
with one job: the sharded vector API; how lanes split and merge is :mod:`rlmesh.client.lanes`.)

``N`` lanes split over ``K`` shards as evenly as possible, lanes in order. The semantics are
those of one in-process ``SyncVectorEnv`` of ``N`` lanes: ``reset(seed=s)`` seeds lane ``i``
with ``s + i`` (shard ``j`` is reset with ``s`` plus its first lane), ``options["reset_mask"]``
is split per shard, infos are merged with Gymnasium's ``_key`` masks, and each shard applies
the same autoreset mode. Requests go to every shard at once and the replies are gathered: no
shard waits for another's reply before its request is sent.

A shard that fails raises its own error (its type is kept: ``SandboxExitedError``,
``RemoteEnvError[...]``), with ``shard`` and ``lanes`` attributes and a note naming them.

EnvPool-style stepping: ``await step_async(actions)`` / ``await step_wait()`` split a step in
two, and ``send(actions, env_ids)`` / ``recv()`` step whole shards and return the first to
finish (at least ``batch_size`` lanes), with ``info["env_id"]``. See ``docs/scale-out.md``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space, iterate

from ..errors import EnvClosedError, InvalidArgumentError, ProtocolError, RLMeshError
from ..protocol import Frame, MessageType, SpecData
from .core import Exchange, Request
from .env import Sent
from .lanes import concat_lanes, copied, merge_infos
from .remote_shard import RemoteShard, SplitStep

__all__ = ["AsyncShardedVectorEnv"]


class AsyncShardedVectorEnv(SplitStep):
    """A vector env of ``N`` lanes over one or more shards, stepped concurrently.

    Args:
        shards: The shards (:class:`~rlmesh.client.env.RemoteShard`, sandboxes among them), not
            yet started; their lanes, in order, are this env's lanes. A subclass may leave them to
            :meth:`_open_shards` (Ray places them as they start).
    """

    def __init__(self, shards: Sequence[RemoteShard]) -> None:
        self.shards: list[RemoteShard] = list(shards)
        self._one: RemoteShard | None = None  # the shard, when there is one: every call is its own
        self._closed = False
        self._pending: asyncio.Task[Any] | None = None
        self._inflight: dict[asyncio.Task[Any], int] = {}
        self.batch_size: int | None = None
        self.num_envs = 0
        self.bounds: list[tuple[int, int]] = []
        self._last_obs: list[Any] = [None] * len(self.shards)
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
            self._last_obs = [None] * len(self.shards)
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
        starts = np.cumsum([0, *sizes])
        self.bounds = [(int(starts[j]), int(starts[j + 1])) for j in range(len(sizes))]
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
        self._one = first if len(self.shards) == 1 else None
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
        self._drop_pending()
        inflight, self._inflight = list(self._inflight), {}
        for task in inflight:
            task.cancel()  # started (send yields once), so each forgets its request
        await asyncio.gather(*inflight, return_exceptions=True)
        self._last_obs = [None] * len(self.shards)
        await asyncio.gather(*(shard.close() for shard in self.shards), return_exceptions=True)

    def __repr__(self) -> str:
        spec_id = self.spec.id if self.spec is not None else "?"
        where = self.shards[0].address if len(self.shards) == 1 else f"{len(self.shards)} shards"
        return f"<{type(self).__name__} {spec_id} at {where}>"

    async def __aenter__(self) -> AsyncShardedVectorEnv:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the vector API ------------------------------------------------------
    async def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Reset every lane (or those in ``options["reset_mask"]``), as ``VectorEnv.reset``."""
        self._check_open()
        if self._one is not None:
            return await self._one.reset(seed=seed, options=options)
        calls = [(j, self.shards[j].reset(seed=s, options=o)) for j, s, o in self._reset_parts(seed, options)]
        return self._merge_reset(await self._gather(calls))

    def _reset_parts(self, seed: Any, options: dict[str, Any] | None) -> list[tuple[int, Any, dict[str, Any] | None]]:
        # Each shard's seed and options; a shard with no lane in the reset mask is left out.
        seeds = self._split_seed(seed)
        mask = None if options is None else options.get("reset_mask")
        if mask is not None and np.asarray(mask).shape != (self.num_envs,):
            raise ValueError(f"`options['reset_mask']` must have shape `({self.num_envs},)`, got {np.shape(mask)}")
        parts = []
        for j, (a, b) in enumerate(self.bounds):
            shard_options = options
            if options is not None and mask is not None:
                part = np.asarray(mask)[a:b]
                if not part.any():
                    continue  # a shard with no lane to reset is not asked (Gymnasium refuses an empty mask)
                shard_options = {**options, "reset_mask": part}
            parts.append((j, seeds[j], shard_options))
        return parts

    async def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step every lane, as ``VectorEnv.step``: every shard at once."""
        if self._one is not None and not self._closed:
            return await self._one.step(actions)
        return await self.end_step(await self.begin_step(actions))

    async def step_async(self, actions: Any) -> None:
        """Send a step and return once it is sent; :meth:`step_wait` returns its result."""
        if self._one is not None and not self._closed:
            await self._one.step_async(actions)
        else:
            await super().step_async(actions)

    async def step_wait(self) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """The result of the step sent by :meth:`step_async`."""
        if self._one is not None and not self._closed:
            return await self._one.step_wait()
        return await super().step_wait()

    async def begin_step(self, actions: Any) -> list[tuple[int, Sent]]:
        """Send every shard its part of a step now; :meth:`end_step` returns the merged result."""
        self._check_open()
        self._check_no_pending()
        if self._inflight:
            raise InvalidArgumentError("steps were sent with send() whose results were not received: call recv first")
        parts = self.split_actions(actions)
        return await self._begin_steps([(j, parts[j]) for j in range(len(self.shards))])

    async def end_step(self, sent: list[tuple[int, Sent]]) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """The merged result of a step sent by :meth:`begin_step`. Every request was written
        before this waits, so the replies are collected in shard order; the first failure (in
        that order) is raised, naming its shard, and the rest are dropped."""
        frames: list[tuple[int, Frame]] = []
        try:
            for j, one in sent:
                try:
                    frames.append((j, await self.shards[j].reply(one)))
                except RLMeshError as exc:
                    raise self.named(exc, j) from None
        except BaseException:
            self.drop(sent[len(frames) + 1:])
            raise
        return self._merge_frames(frames)

    def drop(self, sent: list[tuple[int, Sent]]) -> None:
        """Forget the shards' requests of a step whose result will not be awaited."""
        for j, one in sent:
            self.shards[j].drop(one)

    async def _begin_steps(self, parts: list[tuple[int, Any]]) -> list[tuple[int, Sent]]:
        # Each shard's request is written before any reply is awaited; one that cannot be sent
        # names its shard, and those already sent are dropped.
        sent: list[tuple[int, Sent]] = []
        try:
            for j, part in parts:
                try:
                    sent.append((j, await self.shards[j].begin_step(part)))
                except RLMeshError as exc:
                    raise self.named(exc, j) from None
        except BaseException:
            self.drop(sent)
            raise
        return sent

    # -- the exchanges the sync shell writes from its own thread (rlmesh.client.core) --
    def step_exchange(self, actions: Any) -> Exchange[tuple[Any, Any, Any, Any, dict[str, Any]]]:
        """A step: each shard's STEP request, and the merge of their replies."""
        self._check_open()
        if self._one is not None:
            return self._one.step_exchange(actions)
        parts = self.split_actions(actions)
        requests: list[Request] = [(shard, MessageType.STEP, shard.step_body(parts[j])) for j, shard in enumerate(self.shards)]
        return Exchange(requests, self._step_frames, self.named)

    def _step_frames(self, frames: list[Frame]) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        return self._merge_frames(list(enumerate(frames)))

    def reset_exchange(self, seed: Any, options: dict[str, Any] | None) -> Exchange[tuple[Any, dict[str, Any]]]:
        """A reset: the RESET request of each shard that has a lane to reset, and the merge."""
        self._check_open()
        if self._one is not None:
            return self._one.reset_exchange(seed, options)
        parts = self._reset_parts(seed, options)
        shards = [j for j, _, _ in parts]

        def finish(frames: list[Frame]) -> tuple[Any, dict[str, Any]]:
            results = []
            for j, frame in zip(shards, frames, strict=True):
                try:
                    results.append((j, self.shards[j].reset_result(frame)))
                except RLMeshError as exc:
                    raise self.named(exc, j) from None
            return self._merge_reset(results)

        requests: list[Request] = [(self.shards[j], MessageType.RESET, self.shards[j].reset_body(s, o)) for j, s, o in parts]
        return Exchange(requests, finish, lambda exc, i: self.named(exc, shards[i]))

    def render_exchange(self) -> Exchange[tuple[Any, ...]]:
        """A render: every shard's frames, in lane order."""
        self._check_open()
        if self._one is not None:
            return self._one.render_exchange()

        def finish(frames: list[Frame]) -> tuple[Any, ...]:
            values = []
            for j, frame in enumerate(frames):
                try:
                    values.extend(self.shards[j].value_result(frame, MessageType.RENDER))
                except RLMeshError as exc:
                    raise self.named(exc, j) from None
            return tuple(values)

        return Exchange([(shard, MessageType.RENDER, None) for shard in self.shards], finish, self.named)

    def _merge_frames(self, frames: list[tuple[int, Frame]]) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Check and merge STEP reply frames, in shard order; the first failure names its shard.

        Arrays from the shards' shared regions are read as views and copied once, by the merge's
        concatenation, straight into the batch; each region is freed after that."""
        if len(frames) == 1 and self._size(frames[0][0]) == self.num_envs:
            j, frame = frames[0]
            try:
                result = self.shards[j].step_result(frame)
            except RLMeshError as exc:
                raise self.named(exc, j) from None
            self._last_obs[j] = result[0]
            return result
        results = []
        try:
            for j, frame in frames:
                try:
                    results.append((j, self.shards[j].step_views(frame)))
                except RLMeshError as exc:
                    raise self.named(exc, j) from None
            merged = self._merge_step(results, owned=False)
        finally:
            for j, frame in frames:
                self.shards[j].release_region(frame.request_id)
        return merged

    async def render(self) -> tuple[Any, ...]:
        """Every lane's frame."""
        if self._one is not None:
            return tuple(await self._one.render())
        results = await self._gather([(j, shard.render()) for j, shard in enumerate(self.shards)])
        return tuple(frame for _, frames in results for frame in frames)

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
                raise ValueError(f"values must have length num_envs={self.num_envs}, got {len(values)}")
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
        if self._one is not None:
            await self._one.send(actions, env_ids)
            return
        self._check_no_pending()
        shard_ids = self._shards_of(env_ids)
        busy = set(self._inflight.values()) & set(shard_ids)
        if busy:
            raise InvalidArgumentError(f"shard(s) {sorted(busy)} were sent a step whose result was not received")
        lanes = list(iterate(batch_space(self.single_action_space, sum(self._size(j) for j in shard_ids)), actions))
        parts, at = [], 0
        for j in shard_ids:
            n = self._size(j)
            parts.append((j, concat_lanes(self.single_action_space, lanes[at:at + n])))
            at += n
        for j, one in await self._begin_steps(parts):  # sent now; recv collects the results
            self._inflight[asyncio.ensure_future(self._tagged(j, one))] = j
        await asyncio.sleep(0)  # the tasks start (and wait for their replies): close() can cancel them

    async def recv(self) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Results of the first shards to finish, at least ``batch_size`` lanes (all in flight when
        ``batch_size`` is None); ``info["env_id"]`` says which lanes, in the order returned."""
        self._check_open()
        if self._one is not None:
            return await self._one.recv()
        if not self._inflight:
            raise InvalidArgumentError("recv without send")
        want = self.batch_size or sum(self._size(j) for j in self._inflight.values())
        done: list[tuple[int, Any]] = []
        while sum(self._size(j) for j, _ in done) < want and self._inflight:
            finished, _ = await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(finished, key=lambda t: self._inflight[t]):
                j = self._inflight.pop(task)
                done.append((j, task.result()))
        obs, rewards, terms, truncs, info = self._merge_step(done, only=[j for j, _ in done])
        info["env_id"] = np.concatenate([np.arange(*self.bounds[j]) for j, _ in done])
        return obs, rewards, terms, truncs, info

    async def _tagged(self, j: int, sent: Sent) -> Any:
        try:
            return await self.shards[j].end_step(sent)
        except RLMeshError as exc:
            raise self.named(exc, j) from None

    def _shards_of(self, env_ids: Sequence[int] | None) -> list[int]:
        if env_ids is None:
            return list(range(len(self.shards)))
        wanted = sorted({int(i) for i in env_ids})
        shard_ids = [j for j, (a, b) in enumerate(self.bounds) if any(a <= i < b for i in wanted)]
        covered = [i for j in shard_ids for i in range(*self.bounds[j])]
        if covered != wanted:
            raise InvalidArgumentError(
                f"send steps whole shards; env_ids must be the lanes of whole shards: {self.bounds}"
            )
        return shard_ids

    def _size(self, j: int) -> int:
        a, b = self.bounds[j]
        return b - a

    # -- splitting and merging -----------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise EnvClosedError("this env is closed")

    _check_can_step = _check_open

    def _split_seed(self, seed: Any) -> list[Any]:
        if seed is None or (isinstance(seed, int) and not isinstance(seed, bool)):
            return [None if seed is None else seed + a for a, _ in self.bounds]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"If seeds are passed as a list the length must match num_envs={self.num_envs} "
                             f"but got length={len(seeds)}.")
        return [seeds[a:b] for a, b in self.bounds]

    def split_actions(self, actions: Any) -> list[Any]:
        """One batch of actions per shard."""
        if isinstance(actions, np.ndarray) and isinstance(
            self.single_action_space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
        ) and actions.shape[:1] == (self.num_envs,):
            return [actions[a:b] for a, b in self.bounds]  # the fast path: views
        lanes = list(iterate(self.action_space, actions))
        if len(lanes) != self.num_envs:
            raise ValueError(f"expected actions for {self.num_envs} lanes, got {len(lanes)}")
        return [concat_lanes(self.single_action_space, lanes[a:b]) for a, b in self.bounds]

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
        """``exc``, with the shard ``j`` and its lanes named (attributes and a note)."""
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

    def _merge_reset(self, results: list[tuple[int, Any]]) -> tuple[Any, dict[str, Any]]:
        # A masked reset may skip whole shards: their lanes keep the observation they had (as in
        # SyncVectorEnv), which the host kept; their infos add nothing.
        reset = dict(results)
        for j, (obs, _) in results:
            self._last_obs[j] = obs
        obs = self._concat_obs([(j, self._last_obs[j]) for j in range(len(self.shards))])
        return obs, self._merge_infos([(j, info) for j, (_, info) in reset.items()])

    def _merge_step(self, results: list[tuple[int, Any]], only: list[int] | None = None,
                    owned: bool = True) -> tuple[Any, ...]:
        # owned=False: the results' arrays may be views into the shards' regions, which the
        # concatenation below copies. A view is kept for a masked reset all the same: a shard's
        # region holds its latest observation until its next step, whose result replaces it here.
        for j, r in results:
            self._last_obs[j] = r[0]
        if len(results) == 1 and self._size(results[0][0]) == self.num_envs:
            return tuple(results[0][1]) if owned else copied(tuple(results[0][1]))  # one shard: its step is the step
        obs = self._concat_obs([(j, r[0]) for j, r in results])
        rewards, terms, truncs = (np.concatenate([r[k] for _, r in results]) for k in (1, 2, 3))
        return obs, rewards, terms, truncs, self._merge_infos([(j, r[4]) for j, r in results], only=only)

    def _concat_obs(self, parts: list[tuple[int, Any]]) -> Any:
        values = [v for _, v in parts]
        if any(v is None for v in values):
            raise InvalidArgumentError("reset every lane once before a masked reset")
        if all(isinstance(v, np.ndarray) for v in values):
            return np.concatenate(values, axis=0)
        lanes = [x for j, v in parts for x in iterate(self.shards[j].observation_space, v)]
        return concat_lanes(self.single_observation_space, lanes)

    def _merge_infos(self, parts: list[tuple[int, dict[str, Any]]], only: list[int] | None = None) -> dict[str, Any]:
        n = self.num_envs if only is None else sum(self._size(j) for j in only)
        offsets: dict[int, int] = {}
        at = 0
        for j in only if only is not None else range(len(self.shards)):
            offsets[j] = at
            at += self._size(j)
        return merge_infos(n, [(offsets[j], self._size(j), info) for j, info in parts])
