"""``rlmesh.evaluate`` and ``rlmesh.evaluate_async``: score a policy over seeded episodes in sandboxes."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._checks import is_int, is_number
from ..errors import InvalidArgumentError
from ..sandbox.env import SandboxArguments
from ..sandbox.vector import AsyncSandboxVectorEnv
from .policies import resolve_policy
from .progress import EvaluationProgress, ProgressOption, check_progress
from .report import EvaluationReport
from .results import ResultsFile
from .runner import FRESH_MODES, SUCCESS_MODES, Runner, check_options, lanes_for
from .signals import StopSignals
from .videos import load_encoder

__all__ = ["evaluate", "evaluate_async", "run_identity"]

log = logging.getLogger("rlmesh.evaluation")


def _check_seeds(episodes: Any, seeds: Sequence[int] | None) -> list[int]:
    if not is_int(episodes) or episodes < 1:
        raise InvalidArgumentError(f"episodes must be a positive int (episodes per task), got {episodes!r}")
    if seeds is None:
        return list(range(episodes))
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
        raise InvalidArgumentError(f"seeds must be a sequence with one int seed per episode, got {seeds!r}")
    out = list(seeds)
    if len(out) != episodes:
        raise InvalidArgumentError(
            f"seeds has {len(out)} seed(s) but episodes={episodes}: give one seed per episode "
            f"(or leave seeds out for range({episodes}))"
        )
    for seed in out:
        if not is_int(seed) or seed < 0:
            raise InvalidArgumentError(f"each seed must be a non-negative int, got {seed!r}")
    return out


def _check_number(name: str, value: Any, *, minimum: float, integer: bool = False, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not (is_int(value) if integer else is_number(value)) or not value >= minimum:
        what = "an int" if integer else "a number"
        raise InvalidArgumentError(f"{name} must be {what} >= {minimum:g}{' or None' if optional else ''}, got {value!r}")


def _check_videos(videos: Any, episodes: Any, options: dict[str, Any]) -> int:
    """The number of episodes per task to film (0 without ``videos``).

    Raises:
        InvalidArgumentError: ``video_episodes`` without ``videos``, not a positive int, another
            ``render_mode`` given, or imageio-ffmpeg missing.
    """
    if videos is None:
        if episodes is not None:
            raise InvalidArgumentError("video_episodes= needs videos=DIR, the directory the videos are written to")
        return 0
    if not isinstance(videos, (str, os.PathLike)) or not os.fspath(videos):
        raise InvalidArgumentError(f"videos must be a directory path, got {videos!r}")
    count = 1 if episodes is None else episodes
    if not is_int(count) or count < 1:
        raise InvalidArgumentError(f"video_episodes must be a positive int (the first K episodes of each task), got {episodes!r}")
    mode = options.get("render_mode", (options.get("env_kwargs") or {}).get("render_mode"))
    if mode not in (None, "rgb_array"):
        raise InvalidArgumentError(f"videos= renders in rgb_array mode; render_mode={mode!r} was given: leave it out")
    load_encoder()
    return int(count)


def _is_hub_repo(source: str) -> bool:
    """An ``hf://owner/repo[@rev]`` source without a ``:suite/task`` selector."""
    return source.startswith("hf://") and ":" not in source[len("hf://"):]


IDENTITY_OPTIONS = ("packages", "imports", "system_packages", "ignore_libraries", "gl", "base_image", "env", "wrappers", "vectorization_mode")
"""The sandbox options that can change an episode, and so identify a run (with the env kwargs)."""


def run_identity(sources: list[str], seeds: list[int], policy: str, success: str,
                 sandbox_options: dict[str, Any], fresh: str | None = None) -> dict[str, Any]:
    """What identifies a run in its results file: everything that changes an episode.

    Raises:
        InvalidArgumentError: A bad sandbox option (as the sandbox classes say it).
    """
    arguments = SandboxArguments.check("evaluate", sources[0], sandbox_options, vector=True)
    options = {name: getattr(arguments.options, name) for name in IDENTITY_OPTIONS
               if name != "vectorization_mode"}
    options = {k: list(v) if isinstance(v, tuple) else dict(v) if k == "env" else v for k, v in options.items()}
    options["wrappers"] = [list(w) if isinstance(w, (list, tuple)) else w for w in options["wrappers"]]
    options["vectorization_mode"] = sandbox_options.get("vectorization_mode", "sync")
    options["autoreset_mode"] = "next_step"
    return {"sources": sources, "seeds": seeds, "policy": policy, "success": success, "fresh": fresh,
            "env_kwargs": arguments.env_kwargs, "options": options}


async def _expand(sources: list[str], options: dict[str, Any]) -> list[str]:
    """Sources to tasks: an EnvHub repository (or suite) without a task is every task it has."""
    import rlmesh

    list_tasks = getattr(rlmesh, "list_tasks", None)
    # Placement options shape the pool's sandboxes, not the listing of a repository's tasks.
    listing = {k: v for k, v in options.items() if k not in ("shards", "placement")}
    tasks: list[str] = []
    for source in sources:
        if not source.startswith("hf://"):
            tasks.append(source)
        elif list_tasks is not None:
            tasks.extend(await asyncio.to_thread(list_tasks, source, **listing))
        elif _is_hub_repo(source):
            raise InvalidArgumentError(
                f"{source} names no task, and this rlmesh cannot list an EnvHub repository's tasks "
                "(rlmesh.list_tasks): name them, e.g. hf://owner/repo:suite/task"
            )
        else:
            tasks.append(source)
    return list(dict.fromkeys(tasks))


async def evaluate_async(policy: Any, source: str | Sequence[str], *, episodes: int, seeds: Sequence[int] | None = None,
                         concurrency: int = 4, episode_timeout: float | None = None, results: str | None = None,
                         progress: ProgressOption = None, retries: int = 2, success: str = "any",
                         fresh: str | None = None, videos: str | os.PathLike[str] | None = None,
                         video_episodes: int | None = None, **sandbox_options: Any) -> EvaluationReport:
    """The async core of :func:`evaluate`, with the same arguments; see there."""
    acting = resolve_policy(policy)
    if success not in SUCCESS_MODES:
        raise InvalidArgumentError(
            f"success must be 'any' (an episode succeeds if any step reports info['is_success'] or "
            f"info['success']) or 'last' (its last step's report), got {success!r}"
        )
    if fresh not in FRESH_MODES:
        raise InvalidArgumentError(
            f"fresh must be None (a sandbox runs episode after episode) or 'episode' (a fresh env for each "
            f"episode, for envs whose reset depends on what ran before), got {fresh!r}"
        )
    seed_list = _check_seeds(episodes, seeds)
    _check_number("concurrency", concurrency, minimum=1, integer=True)
    _check_number("episode_timeout", episode_timeout, minimum=0.001, optional=True)
    _check_number("retries", retries, minimum=0, integer=True)
    progress = check_progress(progress)
    sources = [source] if isinstance(source, str) else list(source) if isinstance(source, Sequence) else None
    if not sources or not all(isinstance(s, str) and s for s in sources):
        raise InvalidArgumentError(f"source must be a sandbox source or a non-empty list of them, got {source!r}")
    check_options(sandbox_options)
    filmed = _check_videos(videos, video_episodes, sandbox_options)
    options = {"progress": False if progress is False else None, **sandbox_options}
    if filmed:
        options["render_mode"] = "rgb_array"
    lanes = lanes_for(acting, episodes, concurrency)
    shards = sandbox_options.get("shards", 1)
    if not acting.batched and shards not in (1, "auto"):
        raise InvalidArgumentError(
            f"shards={shards!r} splits the lanes of a vector sandbox, and a plain policy runs one episode (one lane) "
            "per sandbox: use a batched policy, rlmesh.batched(fn, lanes=N), or leave shards out"
        )
    AsyncSandboxVectorEnv.check_arguments(sources[0], lanes, **options)  # before anything starts

    run = run_identity(sources, seed_list, acting.name, success, sandbox_options, fresh)
    tasks = await _expand(sources, sandbox_options)
    store = ResultsFile(results, run) if results is not None else None
    earlier = list(store.records) if store is not None else []
    if store is not None and store.extended is not None:
        log.warning("%s: extending the run from %d to %d episode(s) per task", results, store.extended, len(seed_list))
    done = {(r["task"], r["episode"]) for r in earlier}
    images: dict[str, set[str]] = {}
    for r in earlier:
        if r.get("image"):
            images.setdefault(r["task"], set()).add(r["image"])
    tracker = EvaluationProgress(progress, total=len(tasks) * len(seed_list),
                                 done=sum(1 for t, i in done if t in tasks and 0 <= i < len(seed_list)))
    runner = Runner(acting, tasks, seed_list, done, concurrency=concurrency, episode_timeout=episode_timeout,
                    retries=retries, options=options, store=store, progress=tracker, success=success, fresh=fresh,
                    videos=Path(videos) if videos is not None else None, video_episodes=filmed, images=images)
    current = asyncio.current_task()
    assert current is not None
    stop = StopSignals(current)
    try:
        with stop.installed():
            try:
                await runner.run()
            except asyncio.CancelledError:
                if stop.received is None:
                    raise
                current.uncancel()
    finally:
        tracker.close()
        if store is not None:
            store.close()
    stop.reraise()
    return EvaluationReport([*earlier, *runner.records], tasks, run, runner.timing, runner.stepping_seconds,
                            runner.container_starts, runner.start_seconds, runner.policy_calls)


def evaluate(policy: Any, source: str | Sequence[str], *, episodes: int, seeds: Sequence[int] | None = None,
             concurrency: int = 4, episode_timeout: float | None = None, results: str | None = None,
             progress: ProgressOption = None, retries: int = 2, success: str = "any", fresh: str | None = None,
             videos: str | os.PathLike[str] | None = None, video_episodes: int | None = None,
             **sandbox_options: Any) -> EvaluationReport:
    """Score a policy over seeded episodes of one or more tasks, each run in a sandbox.

    One pool of at most ``concurrency`` sandboxes, shared by the tasks, runs the episodes; each
    sandbox is reused across a task's episodes by ``reset(seed=...)`` and replaced only when it
    fails. Episode ``i``
    of a task is reset with ``seeds[i]``. A fault (the env exits, raises, hangs past
    ``episode_timeout``, or its sandbox does not start) is recorded as that episode's ``error``
    and the run goes on; the infrastructure's failures (the engine or the connection went away)
    are retried up to ``retries`` times. With ``results``, each episode's record is appended to a
    JSON Lines file as it ends, and running again resumes: what the file holds is skipped.
    SIGINT or SIGTERM stop the run within seconds with every finished episode on disk and no
    container left. Not callable from a running event loop: use :func:`evaluate_async` there.

    Args:
        policy: A callable ``obs -> action`` (called on the event loop's thread, with the
            episode's own observation, as the env returns it, for every space), an ``async``
            callable, ``"random"`` (samples the action space, seeded per episode),
            :func:`~rlmesh.batched` ``(fn)`` to run episodes as the lanes of vector sandboxes
            (``fn`` gets the batch, as Gymnasium batches it), or a stateful object with
            ``reset(episode)`` (optional) and ``act(obs, episode)`` or ``__call__(obs)``, where
            ``episode`` is a :class:`~rlmesh.evaluation.Episode` (``task``, ``index``, ``seed``,
            ``task_description``). Its actions are checked against the action space.
        source: A sandbox source or a list of them; ``hf://owner/repo`` without a selector means
            every task of the repository (``rlmesh.list_tasks``).
        episodes: Episodes per task.
        seeds: One seed per episode (default ``range(episodes)``).
        concurrency: Sandboxes alive at once at most, over the whole run (default 4).
        episode_timeout: Seconds an episode may take; past it the episode is recorded as a timeout.
        results: A JSON Lines file for the records (resumed when it exists; a run with more
            episodes of the same seeds extends it, any other difference is refused).
        progress: None (a bar on a terminal with the ``progress`` extra, else log lines), True,
            False (silent), or a callable receiving each record.
        retries: Retries of infrastructure failures, per episode and per sandbox start (default 2).
        success: ``"any"`` (default, as Meta-World and LeRobot count it: an episode succeeds if
            any step reports ``info["is_success"]`` or ``info["success"]``) or ``"last"`` (its
            last step's report).
        fresh: None (default: a sandbox runs episode after episode, each reset with its seed) or
            ``"episode"``: a fresh sandbox for each episode (for a batched policy, each set of
            lanes), for envs that ``reset(seed)`` does not fully determine (Meta-World MT1 picks
            its task from the RNG before reseeding). Costs a container start per episode.
        videos: A directory: the first ``video_episodes`` episodes of each task are written as
            ``videos/<task label>/episode_<i>_seed_<s>.mp4`` at the env's ``render_fps`` (the env
            renders in ``rgb_array`` mode in its sandbox; needs imageio-ffmpeg, ``rlmesh[video]``). Each
            record names its video.
        video_episodes: Episodes filmed per task (default 1 with ``videos``).
        **sandbox_options: The sandbox options (``packages``, ``imports``, ``trust_remote_code``,
            ``shards``, ``placement``, ``runtime``, ``docker_host``, ...), as for
            :class:`~rlmesh.SandboxVectorEnv`.

    Returns:
        An :class:`~rlmesh.evaluation.report.EvaluationReport` (``episodes``, ``summary``, ``to_json()``).

    Raises:
        InvalidArgumentError: A bad argument (episodes, seeds, policy, options), or a results file
            written for another run (:class:`~rlmesh.evaluation.results.ResultsMismatchError`).
        SandboxError: The run could not go on (no engine, an image that does not build, retries
            of the infrastructure's failures exhausted); finished episodes stay in ``results``.
        KeyboardInterrupt: SIGINT stopped the run.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise InvalidArgumentError("evaluate() cannot run inside a running event loop: await rlmesh.evaluate_async(...)")
    return asyncio.run(evaluate_async(policy, source, episodes=episodes, seeds=seeds, concurrency=concurrency,
                                      episode_timeout=episode_timeout, results=results, progress=progress,
                                      retries=retries, success=success, fresh=fresh, videos=videos,
                                      video_episodes=video_episodes, **sandbox_options))


evaluate_async.__doc__ = (evaluate.__doc__ or "").replace(
    "Score a policy", "Score a policy (the async core of evaluate)", 1)
