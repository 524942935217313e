"""The evaluation runner: one pool of vector sandboxes for the whole run, reused by ``reset(seed=...)``.

``concurrency`` workers share the run's tasks: each takes the first task with episodes that no
other worker is about to run, holds one :class:`~rlmesh.sandbox.vector.AsyncSandboxVectorEnv` of
``lanes`` lanes for it (one lane for a plain policy, up to ``batched(fn, lanes=N)`` for a batched
one) and runs episodes in its lanes, each lane reset with its episode's seed through
``options["reset_mask"]``; when the task has nothing left to take, the worker closes its sandbox
and takes the next task. So never more than ``concurrency`` sandboxes are alive, and a suite of
many small tasks keeps all of them busy. A sandbox is replaced only when it fails (or, with
``fresh="episode"``, after each episode: a fresh env for every episode). A lane without an
episode to run replays the seed of one that has (so that it can only do what a real episode
does), and its steps are not counted.

When a sandbox fails with more than one episode in its lanes, nobody can tell which lane did
it: those episodes run again one at a time ("isolated"), and the one that fails alone is
recorded. The infrastructure's failures are retried up to ``retries`` times.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium.vector.utils import concatenate, create_empty_array, iterate

from ..errors import InvalidArgumentError, RemoteEnvError, RLMeshTimeoutError, SandboxStartError
from ..sandbox.vector import AsyncSandboxVectorEnv
from .fusing import Fuser
from .one_lane import OneLane
from .policies import Acting, Episode, check_action, maybe_await
from .progress import EvaluationProgress
from .records import EpisodeTimeout, error_of, is_infrastructure, make_record
from .results import ResultsFile, ResultsMismatchError
from .videos import DEFAULT_FPS, EpisodeVideo, load_encoder, video_path

__all__ = ["FRESH_MODES", "SUCCESS_MODES", "Runner", "check_options", "lanes_for"]

log = logging.getLogger("rlmesh.evaluation")

START_FAILURES_PER_TASK = 3  # consecutive failed starts after which a task's remaining episodes are recorded as such
SUCCESS_MODES = ("any", "last")
FRESH_MODES = (None, "episode")
DESCRIPTION_ATTRIBUTES = ("task_description", "task")  # read from the env, in this order, for a stateful policy


@dataclass
class _Episode:
    task: str
    index: int
    seed: int
    attempts: int = 0
    isolate: bool = False


@dataclass
class _Lane:
    episode: _Episode
    started: float
    total: float = 0.0
    length: int = 0
    sampler: Any = None
    info: Episode | None = None  # what a stateful policy is told


@dataclass
class _Fault:
    exc: BaseException
    lanes: list[_Lane]


@dataclass
class _Task:
    name: str
    pending: deque[_Episode]
    isolated: deque[_Episode] = field(default_factory=deque)
    start_failures: int = 0
    steps: int = 0
    start_seconds: float = 0.0  # spent starting sandboxes (image builds included)
    first_ready: float | None = None  # when its first sandbox was up
    last_record: float | None = None  # when its last episode was recorded
    starting: int = 0  # workers starting a sandbox for it (about to take episodes)
    image: str | None = None  # the id of the image its sandboxes run

    def has_work(self) -> bool:
        return bool(self.pending or self.isolated)

    def unclaimed(self, lanes: int) -> bool:
        """Whether it has episodes that the workers starting sandboxes of ``lanes`` for it will not take."""
        return len(self.pending) + len(self.isolated) > self.starting * lanes


class Runner:
    """Runs every pending (task, episode) and records each as it ends.

    Args:
        acting: The resolved policy.
        tasks: Task sources, run one after the other.
        seeds: One seed per episode (the same for every task).
        done: (task, episode) pairs already recorded (a resumed run), skipped.
        concurrency: Sandboxes per task at most.
        episode_timeout: Seconds per episode, or None.
        retries: Retries of the infrastructure's failures per episode, and per start.
        options: Sandbox options for :class:`~rlmesh.sandbox.vector.AsyncSandboxVectorEnv`.
        store: The results file, or None.
        progress: Progress display.
        success: ``"any"`` (an episode succeeds if any step reports success) or ``"last"``
            (its last step's report).
        fresh: None (a sandbox runs episode after episode) or ``"episode"`` (a fresh sandbox for
            each episode, or each set of lanes, for envs whose reset depends on their history).
        videos: A directory for the videos of the first ``video_episodes`` episodes of each task
            (the sandboxes render in ``rgb_array`` mode), or None.
        images: The image ids a resumed run's records name, per task: a sandbox on another image
            (rebuilt, so the versions pip resolved may differ) stops the run.
    """

    def __init__(self, acting: Acting, tasks: Sequence[str], seeds: Sequence[int], done: set[tuple[str, int]],
                 *, concurrency: int, episode_timeout: float | None, retries: int, options: dict[str, Any],
                 store: ResultsFile | None, progress: EvaluationProgress, success: str = "any",
                 fresh: str | None = None, videos: Path | None = None, video_episodes: int = 0,
                 images: dict[str, set[str]] | None = None) -> None:
        self.acting = acting
        self.tasks = list(tasks)
        self.seeds = list(seeds)
        self.done = done
        self.concurrency = concurrency
        self.episode_timeout = episode_timeout
        self.retries = retries
        self.options = options
        self.store = store
        self.progress = progress
        self.success = success
        self.fresh = fresh
        self.images = images or {}
        self.videos = videos
        self.video_episodes = video_episodes if videos is not None else 0
        self._encoder = load_encoder() if self.video_episodes else None
        self.records: list[dict[str, Any]] = []
        self.timing: dict[str, tuple[int, float]] = {}  # task -> (steps, seconds stepping)
        self.start_seconds: dict[str, float] = {}  # task -> seconds spent starting sandboxes
        self.stepping_seconds = 0.0  # from the first sandbox up to the end
        self.container_starts = 0
        self.policy_calls = 0
        self._tasks: list[_Task] = []
        self._fuser: Fuser | None = None

    async def run(self) -> None:
        """Run every task's pending episodes over one pool of at most ``concurrency`` sandboxes."""
        loop = asyncio.get_running_loop()
        lanes = lanes_for(self.acting, len(self.seeds), self.concurrency)
        for name in self.tasks:
            pending = deque(_Episode(name, i, seed) for i, seed in enumerate(self.seeds) if (name, i) not in self.done)
            if pending:
                self._tasks.append(_Task(name, pending))
        workers = min(self.concurrency, sum(math.ceil(len(t.pending) / lanes) for t in self._tasks))
        if self.acting.fuse:
            self._fuser = Fuser(self.acting, self.acting.max_batch, self._count_call)
        started = loop.time()
        try:
            await _all([self._worker(lanes) for _ in range(workers)])
        finally:
            if self._fuser is not None:
                await self._fuser.close()
            end = loop.time()
            # Stepping time: from a task's first sandbox up to its last record, so that builds and
            # the first start do not count; every start's seconds are reported apart.
            for task in self._tasks:
                self.timing[task.name] = (task.steps, (task.last_record or end) - (task.first_ready or end))
                self.start_seconds[task.name] = task.start_seconds
            ready = [t.first_ready for t in self._tasks if t.first_ready is not None]
            self.stepping_seconds = end - min(ready, default=started)

    def _count_call(self, lanes: int) -> None:
        self.policy_calls += 1

    def _next_task(self, lanes: int) -> _Task | None:
        """The first task with episodes that the workers starting for it will not take."""
        for task in self._tasks:
            if task.unclaimed(lanes):
                return task
        return None

    def _record(self, lane: _Lane | _Episode, *, seconds: float, error: dict[str, Any] | None = None,
                terminated: bool = False, truncated: bool = False, success: bool | None = None,
                video: str | None = None) -> None:
        ep = lane.episode if isinstance(lane, _Lane) else lane
        total = lane.total if isinstance(lane, _Lane) and error is None else None
        length = lane.length if isinstance(lane, _Lane) else 0
        task = next(t for t in self._tasks if t.name == ep.task)
        record = make_record(ep.task, ep.index, ep.seed, total=total, length=length, terminated=terminated,
                             truncated=truncated, success=success, seconds=seconds, attempts=ep.attempts, error=error,
                             video=video, image=task.image)
        if self.store is not None:
            self.store.append(record)
        self.records.append(record)
        task.last_record = asyncio.get_running_loop().time()
        self.progress.update(record)

    # -- a worker: one sandbox at a time, replaced when it fails ---------------------
    async def _worker(self, lanes: int) -> None:
        while (task := self._next_task(lanes)) is not None:
            await self._serve(task, lanes)

    async def _serve(self, task: _Task, lanes: int) -> None:
        """Run ``task``'s episodes in a sandbox of ``lanes`` lanes until it has none to take."""
        env: Any = None
        try:
            while task.has_work() if env is not None else task.unclaimed(lanes):
                if env is None:
                    task.starting += 1
                    try:
                        env = await self._start(task, lanes)
                    finally:
                        task.starting -= 1
                    if env is None:
                        continue
                if self._fuser is not None:
                    self._fuser.enter()
                try:
                    fault = await self._drive(env, task, lanes)
                finally:
                    if self._fuser is not None:
                        self._fuser.leave()
                if fault is None:
                    if self.fresh is None:
                        return
                    old, env = env, None  # a fresh sandbox for the next episodes
                    await old.close()
                    continue
                keep = isinstance(fault.exc, RemoteEnvError) and lanes == 1 and self.fresh is None  # still usable
                if not keep:
                    old, env = env, None
                    await old.close()
                self._handle(task, fault)
        finally:
            if env is not None:
                await env.close()

    async def _start(self, task: _Task, lanes: int) -> Any:
        """A started sandbox, or None when its start failed for the env's reason (then recorded)."""
        attempt = 0
        loop = asyncio.get_running_loop()
        while True:
            env = self._sandbox(task.name, lanes)
            began = loop.time()
            try:
                try:
                    await env.start()
                finally:
                    task.start_seconds += loop.time() - began
            except SandboxStartError as exc:
                await env.close()
                task.start_failures += 1
                self._start_failed(task, exc)
                return None
            except Exception as exc:
                await env.close()
                if (is_infrastructure(exc) or isinstance(exc, RLMeshTimeoutError)) and attempt < self.retries:
                    attempt += 1
                    log.warning("starting a sandbox for %s failed (%s); retry %d of %d", task.name,
                                str(exc).splitlines()[0], attempt, self.retries)
                    await asyncio.sleep(min(0.5 * 2 ** attempt, 5.0))
                    continue
                raise
            self.container_starts += 1
            task.start_failures = 0
            try:
                await self._check_image(task, getattr(env, "image_id", None))
            except BaseException:
                await env.close()
                raise
            if task.first_ready is None:
                task.first_ready = loop.time()
            return env

    async def _check_image(self, task: _Task, image: str | None) -> None:
        """Note the image a task's sandbox runs; refuse one that differs from a resumed run's.

        Raises:
            ResultsMismatchError: The task's earlier records ran on another image (the message
                names the distributions whose versions differ, when both images are still here).
        """
        task.image = image
        earlier = self.images.get(task.name)
        if image is None or not earlier or image in earlier:
            return
        path = str(self.store.path) if self.store is not None else ""
        changed = await installed_difference(sorted(earlier)[-1], image)
        why = (f"what pip installed differs: {changed}" if changed else
               "the image was rebuilt, and pip may have resolved other versions")
        raise ResultsMismatchError(
            f"{path} holds results of another run (image of {task.name}: {', '.join(sorted(earlier))} in the file, "
            f"{image} now: {why}). To resume it, run on the same image (`rlmesh image lock` of the file's image "
            "gives packages= a lock file to rebuild it); to start a new run, give another results path or remove "
            "this file",
            path=path, differences={"image": (sorted(earlier), image)},
        )

    def _sandbox(self, source: str, lanes: int) -> Any:
        """A sandbox of ``lanes`` lanes (not started): one env for one lane, unless it is placed."""
        if lanes == 1 and not self.acting.batched and self.options.get("placement") is None:
            return OneLane(source, **{k: v for k, v in self.options.items() if k != "shards"})
        return AsyncSandboxVectorEnv(source, lanes, **self.options)

    def _start_failed(self, task: _Task, exc: SandboxStartError) -> None:
        error = error_of(exc)
        queue = task.isolated or task.pending
        if queue:
            ep = queue.popleft()
            ep.attempts += 1
            self._record(ep, seconds=0.0, error=error)
        if task.start_failures >= START_FAILURES_PER_TASK:
            error = dict(error, message=f"not run: the sandbox failed to start {task.start_failures} times in a row "
                                        f"({error['message']})")
            for queue in (task.isolated, task.pending):
                while queue:
                    self._record(queue.popleft(), seconds=0.0, error=error)

    def _handle(self, task: _Task, fault: _Fault) -> None:
        now = asyncio.get_running_loop().time()
        if is_infrastructure(fault.exc):
            for lane in reversed(fault.lanes):
                if lane.episode.attempts <= self.retries:
                    log.warning("episode %d of %s: %s; retrying", lane.episode.index, task.name,
                                str(fault.exc).splitlines()[0])
                    task.pending.appendleft(lane.episode)
                else:
                    self._record(lane, seconds=now - lane.started, error=error_of(fault.exc))
        elif len(fault.lanes) == 1:
            self._record(fault.lanes[0], seconds=now - fault.lanes[0].started, error=error_of(fault.exc))
        else:
            for lane in reversed(fault.lanes):
                lane.episode.isolate = True
                task.isolated.appendleft(lane.episode)

    # -- the lanes of one sandbox -------------------------------------------------------
    def _take(self, task: _Task, active: list[_Lane | None]) -> _Episode | None:
        real = [lane for lane in active if lane is not None]
        if any(lane.episode.isolate for lane in real):
            return None
        if task.isolated:
            return task.isolated.popleft() if not real else None
        return task.pending.popleft() if task.pending else None

    async def _call(self, coro: Any, lanes: list[_Lane | None]) -> Any:
        if self.episode_timeout is None:
            return await coro
        deadline = min(lane.started for lane in lanes if lane is not None) + self.episode_timeout
        try:
            async with asyncio.timeout_at(deadline) as scope:
                return await coro
        except TimeoutError:
            if scope.expired():
                raise EpisodeTimeout(self.episode_timeout) from None
            raise

    async def _drive(self, env: Any, task: _Task, n: int) -> _Fault | None:
        """Run episodes in ``env``'s lanes until there is nothing to take (None) or it fails (a fault)."""
        loop = asyncio.get_running_loop()
        acting = self.acting
        act_space = env.single_action_space
        actions_buf = create_empty_array(act_space, n)
        active: list[_Lane | None] = [None] * n
        # Per-lane sums as arrays (the same IEEE additions, in the same order, as a Python float's).
        totals = np.zeros(n, dtype=np.float64)
        lengths = np.zeros(n, dtype=np.int64)
        is_real = np.zeros(n, dtype=np.bool_)
        reset = np.ones(n, dtype=np.bool_)
        succeeded = np.zeros(n, dtype=np.bool_)  # success="any": reported at some step
        reported = np.zeros(n, dtype=np.bool_)
        described: list[str] = list(DESCRIPTION_ATTRIBUTES) if acting.stateful else []
        recording: dict[int, EpisodeVideo] = {}  # lane -> its episode's video
        fps = float(getattr(env, "metadata", {}).get("render_fps") or DEFAULT_FPS)
        first = True
        obs: Any = None

        def fault(exc: BaseException) -> _Fault:
            for video in recording.values():  # a rerun writes it again
                video.discard()
            recording.clear()
            if isinstance(exc, EpisodeTimeout):  # what the hung env said last
                exc.logs = getattr(env, "container_logs", "")
            for i, lane in enumerate(active):
                if lane is not None:
                    lane.length = int(lengths[i])
            return _Fault(exc, [lane for lane in active if lane is not None])

        pending = True  # lanes to reset (a Python flag: the step loop below stays free of NumPy reductions)
        stepping = 0  # lanes with an episode
        while True:
            fresh: list[int] = []  # lanes whose episode began at this reset
            if pending:
                for i in np.flatnonzero(reset).tolist():
                    if active[i] is None and (first or self.fresh is None):  # fresh: one set of episodes
                        ep = self._take(task, active)
                        if ep is not None:
                            ep.attempts += 1
                            active[i] = _Lane(ep, loop.time())
                real = [lane for lane in active if lane is not None]
                if not real:
                    return None
                stepping = len(real)
                try:
                    seeds: list[int | None] = [None] * n
                    for i in np.flatnonzero(reset).tolist():
                        lane = active[i]
                        seeds[i] = (lane or real[0]).episode.seed  # an idle lane replays a real lane's seed
                        totals[i], lengths[i], is_real[i] = 0.0, 0, lane is not None
                        succeeded[i] = reported[i] = False
                        if lane is not None:
                            fresh.append(i)
                            lane.started = loop.time()
                            if acting.fn is None:
                                lane.sampler = acting.fresh_sampler(act_space, lane.episode.seed)
                    options = None if first else {"reset_mask": reset.copy()}
                    obs, reset_infos = await self._call(env.reset(seed=seeds, options=options), active)
                    first = pending = False
                    reset[:] = False
                    if acting.stateful:
                        await self._describe(env, active, fresh, reset_infos, described)
                    for i in fresh:
                        lane = active[i]
                        if lane is not None and lane.episode.index < self.video_episodes and self.videos is not None:
                            ep = lane.episode
                            recording[i] = EpisodeVideo(self._encoder, video_path(self.videos, ep.task, ep.index, ep.seed), fps)
                    if recording:
                        await self._film(env, active, recording)
                except Exception as exc:
                    return fault(exc)
            if acting.reset is not None:
                for i in fresh:  # its errors end the run
                    lane = active[i]
                    assert lane is not None and lane.info is not None
                    await maybe_await(acting.reset(lane.info))
            actions = await self._act(obs, env, act_space, active, actions_buf)  # its errors end the run
            try:
                if self.episode_timeout is None:
                    obs, rewards, terminations, truncations, infos = await env.step(actions)
                else:
                    obs, rewards, terminations, truncations, infos = await self._call(env.step(actions), active)
                if recording:
                    await self._film(env, active, recording)
            except Exception as exc:
                return fault(exc)
            np.add(totals, rewards, out=totals, where=is_real)
            lengths += is_real
            task.steps += stepping
            if self.success == "any" and infos:
                _note_success(infos, succeeded, reported)
            done = terminations | truncations
            if not done.any():
                continue
            pending = True
            now = loop.time()
            for i in np.flatnonzero(done).tolist():
                reset[i] = True
                lane = active[i]
                if lane is not None:
                    lane.total, lane.length = float(totals[i]), int(lengths[i])
                    success = (bool(succeeded[i]) if reported[i] else None) if self.success == "any" else _success(infos, i)
                    video = recording.pop(i, None)
                    if video is not None:
                        video.close()
                    self._record(lane, seconds=now - lane.started, terminated=bool(terminations[i]),
                                 truncated=bool(truncations[i]), success=success,
                                 video=None if video is None else str(video.path))
                    active[i] = None
                    is_real[i] = False

    async def _film(self, env: Any, active: list[_Lane | None], recording: dict[int, EpisodeVideo]) -> None:
        """Add the frame each recorded lane's env renders now to its video."""
        frames = await self._call(env.render(), active)
        if frames is None:
            raise InvalidArgumentError("videos= needs frames, and the env rendered None: does it take render_mode?")
        for i, video in recording.items():
            video.add(frames[i])

    async def _describe(self, env: Any, active: list[_Lane | None], fresh: list[int], infos: dict[str, Any],
                        attributes: list[str]) -> None:
        """Tell each freshly reset lane's episode its task description (see :class:`Episode`).

        ``attributes`` are those still worth asking for: one the env does not have is dropped."""
        values: tuple[Any, ...] | None = None
        while attributes and values is None:
            try:
                got = await self._call(env.get_attr(attributes[0]), active)
            except RemoteEnvError as exc:
                if exc.remote_type.rsplit(".", 1)[-1] != "AttributeError":
                    raise
                attributes.pop(0)
                continue
            if all(v is None or isinstance(v, str) for v in got):
                values = got
            else:  # not a description (a task object, an index)
                attributes.pop(0)
        task_info = infos.get("task") if isinstance(infos, dict) else None
        task_mask = infos.get("_task") if isinstance(infos, dict) else None
        for i in fresh:
            lane = active[i]
            assert lane is not None
            description = values[i] if values is not None else None
            if description is None and task_info is not None and (task_mask is None or bool(task_mask[i])):
                item = task_info[i]
                description = item if isinstance(item, str) else None
            ep = lane.episode
            lane.info = Episode(ep.task, ep.index, ep.seed, description)

    async def _act(self, obs: Any, env: Any, act_space: Any, active: list[_Lane | None], buf: Any) -> Any:
        acting = self.acting
        if acting.batched:
            assert acting.fn is not None
            episodes = [lane.info if lane else None for lane in active]
            if self._fuser is not None:
                actions = await self._fuser.act(env.single_observation_space, obs, len(active), episodes)
            else:
                self.policy_calls += 1
                actions = await maybe_await(acting.fn(obs, episodes) if acting.with_episode else acting.fn(obs))
            check_action(acting, env.action_space, actions, lambda: _where(active))
            return actions
        lane = active[0]
        assert lane is not None
        if acting.fn is None:
            action = lane.sampler.sample()
        else:
            # Lane 0's observation, as the env returned it (a Box's: the row itself).
            mine = obs[0] if isinstance(obs, np.ndarray) else next(iter(iterate(env.observation_space, obs)))
            self.policy_calls += 1
            action = await maybe_await(acting.fn(mine, lane.info) if acting.with_episode else acting.fn(mine))
            check_action(acting, act_space, action, lambda: _where(active))
        if isinstance(buf, np.ndarray):  # a Discrete or Box action: one row
            buf[0] = action
            return buf
        return concatenate(act_space, [action], buf)


def _where(active: list[_Lane | None]) -> str:
    episodes = [lane.episode for lane in active if lane is not None]
    if len(episodes) == 1:
        ep = episodes[0]
        return f"episode {ep.index} (seed {ep.seed}) of {ep.task}"
    return f"episodes {', '.join(str(ep.index) for ep in episodes)} of {episodes[0].task}"


def _note_success(infos: dict[str, Any], succeeded: Any, reported: Any) -> None:
    """success="any": fold this step's reports (``is_success`` or ``success``) into each lane's."""
    for key in ("is_success", "success"):
        if key not in infos:
            continue
        value = np.asarray(infos[key])
        mask = infos.get("_" + key)
        seen = np.ones(succeeded.shape, dtype=np.bool_) if mask is None else np.asarray(mask, dtype=np.bool_)
        if value.dtype == object:
            value = np.array([bool(v) for v in value.reshape(-1)]).reshape(value.shape)
        succeeded |= np.broadcast_to(value.astype(np.bool_), succeeded.shape) & seen
        reported |= seen


def _success(infos: dict[str, Any], i: int) -> bool | None:
    for key in ("is_success", "success"):
        if key in infos:
            mask = infos.get("_" + key)
            if mask is not None and not bool(np.asarray(mask)[i]):
                continue
            value = np.asarray(infos[key])
            return bool(value[i]) if value.ndim else bool(value)
    return None


async def _all(coros: list[Any]) -> None:
    """Run ``coros`` concurrently; the first failure cancels the rest (and is raised as it is).

    Each task is cancelled at most once, so that its clean-up (closing its sandbox) runs to the end.
    """
    if not coros:  # nothing left to run (a resumed run the file already holds)
        return
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks)
        raise
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending)
    errors = [t.exception() for t in tasks if not t.cancelled()]  # every one retrieved, the first raised
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first


def lanes_for(acting: Acting, episodes: int, concurrency: int) -> int:
    """Lanes per sandbox: one for a plain policy; for a batched one, its ``lanes``, fewer when
    ``concurrency`` sandboxes need fewer for ``episodes`` (the same on a resumed run, so that
    ``shards=`` always has its lanes)."""
    return min(acting.lanes, math.ceil(episodes / concurrency)) if acting.batched else 1


def check_options(options: dict[str, Any]) -> None:
    """Refuse sandbox options that evaluation chooses itself.

    Raises:
        InvalidArgumentError: ``num_envs`` or ``autoreset_mode`` given.
    """
    for name in ("num_envs", "autoreset_mode"):
        if name in options:
            raise InvalidArgumentError(
                f"{name}= is chosen by evaluate: each sandbox runs one episode at a time, or N at once as lanes "
                "with a batched policy (rlmesh.batched(fn, lanes=N))"
            )


async def installed_difference(old_image: str, new_image: str) -> str | None:
    """``gymnasium 1.3.0 -> 1.4.0, numpy (added) 2.4.6`` between two sandbox images' records of what
    pip installed, or None when either image (or its record) is gone."""
    from ..sandbox import housekeeping

    try:
        old = (await housekeeping.inspect_image(old_image))["installed"]
        new = (await housekeeping.inspect_image(new_image))["installed"]
    except Exception:  # the image was removed, or the engine is elsewhere: no versions to compare
        return None
    if not old or not new:
        return None
    before = dict(pin.partition("==")[::2] for pin in old)
    after = dict(pin.partition("==")[::2] for pin in new)
    changes = [f"{name} {before.get(name, '(none)')} -> {after.get(name, '(none)')}"
               for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name)]
    return ", ".join(changes[:8]) + (f" and {len(changes) - 8} more" if len(changes) > 8 else "") if changes else None
