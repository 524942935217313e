"""The evaluation report: every episode's record, a summary per task and overall, a table and a plot."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from ..errors import InvalidArgumentError

__all__ = ["EvaluationReport", "figure", "label_of", "suite_of", "summarize"]


def _hub_parts(task: str) -> tuple[str, str | None] | None:
    """``(owner/repo, selector)`` of an ``hf://owner/repo[@rev][:selector]`` task, else None."""
    if not task.startswith("hf://"):
        return None
    body = task[len("hf://"):]
    repo, sep, selector = body.partition(":")
    return repo.partition("@")[0], (selector if sep else None)


def suite_of(task: str) -> str:
    """The suite a task belongs to, for the per-suite figures: ``owner/repo:suite`` for an
    EnvHub ``suite/task``, ``owner/repo`` for a repository's task without a suite, else the
    task (a source is its own suite)."""
    parts = _hub_parts(task)
    if parts is None:
        return task
    repo, selector = parts
    if selector is None or "/" not in selector:
        return repo
    return f"{repo}:{selector.rsplit('/', 1)[0]}"


def label_of(task: str) -> str:
    """A task's label in the table: ``owner/repo:suite/task`` for an EnvHub task (the scheme and
    revision dropped; the results name the revision), else the task."""
    parts = _hub_parts(task)
    if parts is None:
        return task
    repo, selector = parts
    return repo if selector is None else f"{repo}:{selector}"


def _stats(records: Sequence[Mapping[str, Any]], steps: int, seconds: float | None,
           start_seconds: float | None = None) -> dict[str, Any]:
    returns = np.array([r["return"] for r in records if r["error"] is None and isinstance(r["return"], (int, float))],
                       dtype=np.float64)
    successes = [bool(r["success"]) for r in records if r["error"] is None and r["success"] is not None]
    return {
        "episodes": len(records),
        "errors": sum(1 for r in records if r["error"] is not None),
        "return_mean": float(returns.mean()) if returns.size else None,
        "return_std": float(returns.std()) if returns.size else None,
        "return_max": float(returns.max()) if returns.size else None,
        "success_rate": sum(successes) / len(successes) if successes else None,
        "env_steps": steps,
        "env_steps_per_s": steps / seconds if seconds and steps else None,
        "start_seconds": round(start_seconds, 3) if start_seconds is not None else None,
    }


def summarize(records: Sequence[Mapping[str, Any]], tasks: Sequence[str],
              timing: Mapping[str, tuple[int, float]] | None = None, wall: float | None = None,
              start_seconds: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The summary of ``records``: per task (in ``tasks`` order), per suite and overall.

    Each entry has ``episodes``, ``errors``, ``return_mean``, ``return_std`` and ``return_max``
    (over episodes without an error), ``success_rate`` (over episodes whose env reports success,
    else None), ``env_steps``, ``env_steps_per_s`` and ``start_seconds``. Steps per second count
    only what this run stepped, over the time from a task's first sandbox up to its last record
    (``timing``: task -> (steps, seconds); ``wall``: the run's, from its first sandbox to its end);
    ``start_seconds`` is the time spent starting sandboxes (image builds included). A resumed run's earlier episodes
    count in everything else. A suite is an EnvHub suite, or a source (:func:`suite_of`).
    """
    timing = timing or {}
    starts = start_seconds or {}
    per_task = {}
    for task in tasks:
        mine = [r for r in records if r["task"] == task]
        steps, seconds = timing.get(task, (0, 0.0))
        per_task[task] = _stats(mine, steps, seconds, starts.get(task, 0.0))
    per_suite = {}
    for suite in dict.fromkeys(suite_of(task) for task in tasks):
        members = [task for task in tasks if suite_of(task) == suite]
        mine = [r for r in records if r["task"] in members]
        steps = sum(timing.get(task, (0, 0.0))[0] for task in members)
        seconds = sum(timing.get(task, (0, 0.0))[1] for task in members)
        per_suite[suite] = _stats(mine, steps, seconds, sum(starts.get(task, 0.0) for task in members))
    total_steps = sum(steps for steps, _ in timing.values())
    return {"tasks": per_task, "suites": per_suite,
            "overall": _stats(records, total_steps, wall, sum(starts.values()))}


class EvaluationReport:
    """What :func:`~rlmesh.evaluate` returns.

    Attributes:
        episodes: One record per (task, episode), in task then episode order; each a dict with
            the keys of a line of the results file: ``task``, ``episode``, ``seed``, ``return``,
            ``length``, ``terminated``, ``truncated``, ``success``, ``seconds``, ``attempts``,
            ``error`` (None, or ``{type, message, exit_code, log_tail}``).
        summary: ``{"tasks": {task: stats}, "suites": {suite: stats}, "overall": stats}``, stats
            being ``episodes``, ``errors``, ``return_mean``, ``return_std``, ``return_max``,
            ``success_rate``, ``env_steps``, ``env_steps_per_s`` and ``start_seconds`` (see
            :func:`summarize`); ``overall`` also has ``policy_calls`` (this run's calls of the
            policy: with a fused batched policy, one serves every waiting sandbox).
        tasks: The tasks evaluated, in order.
        run: What identifies the run (sources, seeds, policy), as in the results file's header.
        container_starts: Sandboxes this run started (each a vector sandbox; with ``shards``,
            each holds that many containers).
    """

    def __init__(self, episodes: list[dict[str, Any]], tasks: list[str], run: dict[str, Any],
                 timing: Mapping[str, tuple[int, float]] | None = None, wall: float | None = None,
                 container_starts: int = 0, start_seconds: Mapping[str, float] | None = None,
                 policy_calls: int | None = None) -> None:
        order = {task: i for i, task in enumerate(tasks)}
        self.episodes = sorted(episodes, key=lambda r: (order.get(r["task"], len(order)), r["episode"]))
        self.tasks = tasks
        self.run = run
        self.container_starts = container_starts
        self.summary = summarize(self.episodes, tasks, timing, wall, start_seconds)
        self.summary["overall"]["policy_calls"] = policy_calls

    def to_json(self) -> str:
        """The run, its summary and every episode, as a JSON document."""
        data = {"run": self.run, "summary": self.summary, "episodes": self.episodes}
        return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode()

    def table(self) -> str:
        """The summary as a text table: one row per task, one per suite of several tasks, one overall."""
        suites = self.summary.get("suites", {})
        entries = [(label_of(name), s) for name, s in self.summary["tasks"].items()]
        if len(suites) > 1 or any(len([t for t in self.tasks if suite_of(t) == suite]) > 1 for suite in suites):
            entries += [(f"suite {name}", s) for name, s in suites.items()]
        entries.append(("overall", self.summary["overall"]))
        width = max(40, *(len(label) for label, _ in entries))
        header = (f"{'TASK':<{width}} {'EPISODES':>8} {'ERRORS':>6} {'RETURN':>18} {'MAX':>9} {'SUCCESS':>7} "
                  f"{'STEPS/S':>9} {'STARTS':>8}")
        rows = [header]
        for label, s in entries:
            ret = "-" if s["return_mean"] is None else f"{s['return_mean']:.2f} ± {s['return_std']:.2f}"
            best = "-" if s["return_max"] is None else f"{s['return_max']:.2f}"
            success = "-" if s["success_rate"] is None else f"{100 * s['success_rate']:.0f}%"
            rate = "-" if s["env_steps_per_s"] is None else f"{s['env_steps_per_s']:.0f}"
            starts = "-" if not s["start_seconds"] else f"{s['start_seconds']:.1f}s"
            rows.append(f"{label:<{width}} {s['episodes']:>8} {s['errors']:>6} {ret:>18} {best:>9} {success:>7} "
                        f"{rate:>9} {starts:>8}")
        return "\n".join(rows)

    def plot(self, path: str | os.PathLike[str]) -> None:
        """Save a histogram of returns per task (needs matplotlib, which rlmesh does not install).

        Raises:
            InvalidArgumentError: matplotlib is not installed.
        """
        tasks = self.tasks or ["(none)"]
        fig = figure(figsize=(7, 2.2 * len(tasks) + 0.6))
        axes = fig.subplots(len(tasks), 1, squeeze=False)
        for ax, task in zip(axes[:, 0], tasks, strict=True):
            returns = [r["return"] for r in self.episodes if r["task"] == task and r["error"] is None]
            stats = self.summary["tasks"].get(task)
            ax.hist(returns, bins=min(30, max(5, len(returns) // 2)), color="#4c72b0", edgecolor="white")
            title = label_of(task)
            if stats and stats["return_mean"] is not None:
                title += f"  (mean {stats['return_mean']:.1f} ± {stats['return_std']:.1f}, n={len(returns)}"
                title += f", errors {stats['errors']})" if stats["errors"] else ")"
            ax.set_title(title, fontsize=9)
            ax.set_ylabel("episodes")
        axes[-1, 0].set_xlabel("return")
        fig.tight_layout()
        fig.savefig(os.fspath(path), dpi=110)


def figure(**kwargs: Any) -> Any:
    """A ``matplotlib.figure.Figure``, made without pyplot: the global backend (Jupyter's inline
    one, ``MPLBACKEND``) is left as it is, and nothing stays registered once the figure is saved.

    Raises:
        InvalidArgumentError: matplotlib is not installed (it is not an rlmesh dependency).
    """
    try:  # imported by name: an optional dependency, without type stubs here
        module = importlib.import_module("matplotlib.figure")
    except ImportError as exc:
        raise InvalidArgumentError(
            f"plotting needs matplotlib, which rlmesh does not install ({exc}): pip install matplotlib, or the extra rlmesh[plot]"
        ) from None
    return module.Figure(**kwargs)
