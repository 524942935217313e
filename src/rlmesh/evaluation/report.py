"""The evaluation report: every episode's record, a summary per task and overall, a table and a plot."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from ..errors import InvalidArgumentError

__all__ = ["EvaluationReport", "pyplot", "summarize"]


def _stats(records: Sequence[Mapping[str, Any]], steps: int, seconds: float | None) -> dict[str, Any]:
    returns = np.array([r["return"] for r in records if r["error"] is None and isinstance(r["return"], (int, float))],
                       dtype=np.float64)
    successes = [bool(r["success"]) for r in records if r["error"] is None and r["success"] is not None]
    return {
        "episodes": len(records),
        "errors": sum(1 for r in records if r["error"] is not None),
        "return_mean": float(returns.mean()) if returns.size else None,
        "return_std": float(returns.std()) if returns.size else None,
        "success_rate": sum(successes) / len(successes) if successes else None,
        "env_steps": steps,
        "env_steps_per_s": steps / seconds if seconds and steps else None,
    }


def summarize(records: Sequence[Mapping[str, Any]], tasks: Sequence[str],
              timing: Mapping[str, tuple[int, float]] | None = None, wall: float | None = None) -> dict[str, Any]:
    """The summary of ``records``: per task (in ``tasks`` order) and overall.

    Each entry has ``episodes``, ``errors``, ``return_mean`` and ``return_std`` (over episodes
    without an error), ``success_rate`` (over episodes whose env reports success, else None),
    ``env_steps`` and ``env_steps_per_s``. Steps per second count only what this run stepped
    (``timing``: task -> (steps, seconds); ``wall``: the run's seconds); a resumed run's earlier
    episodes count in everything else.
    """
    timing = timing or {}
    per_task = {}
    for task in tasks:
        mine = [r for r in records if r["task"] == task]
        steps, seconds = timing.get(task, (0, 0.0))
        per_task[task] = _stats(mine, steps, seconds)
    total_steps = sum(steps for steps, _ in timing.values())
    return {"tasks": per_task, "overall": _stats(records, total_steps, wall)}


class EvaluationReport:
    """What :func:`~rlmesh.evaluate` returns.

    Attributes:
        episodes: One record per (task, episode), in task then episode order; each a dict with
            the keys of a line of the results file: ``task``, ``episode``, ``seed``, ``return``,
            ``length``, ``terminated``, ``truncated``, ``success``, ``seconds``, ``attempts``,
            ``error`` (None, or ``{type, message, exit_code, log_tail}``).
        summary: ``{"tasks": {task: stats}, "overall": stats}``, stats being ``episodes``,
            ``errors``, ``return_mean``, ``return_std``, ``success_rate``, ``env_steps`` and
            ``env_steps_per_s``.
        tasks: The tasks evaluated, in order.
        run: What identifies the run (sources, seeds, policy), as in the results file's header.
        container_starts: Sandboxes this run started (each a vector sandbox; with ``shards``,
            each holds that many containers).
    """

    def __init__(self, episodes: list[dict[str, Any]], tasks: list[str], run: dict[str, Any],
                 timing: Mapping[str, tuple[int, float]] | None = None, wall: float | None = None,
                 container_starts: int = 0) -> None:
        order = {task: i for i, task in enumerate(tasks)}
        self.episodes = sorted(episodes, key=lambda r: (order.get(r["task"], len(order)), r["episode"]))
        self.tasks = tasks
        self.run = run
        self.container_starts = container_starts
        self.summary = summarize(self.episodes, tasks, timing, wall)

    def to_json(self) -> str:
        """The run, its summary and every episode, as a JSON document."""
        data = {"run": self.run, "summary": self.summary, "episodes": self.episodes}
        return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode()

    def table(self) -> str:
        """The summary as a text table, one row per task and one overall."""
        header = f"{'TASK':<40} {'EPISODES':>8} {'ERRORS':>6} {'RETURN':>18} {'SUCCESS':>7} {'STEPS/S':>9}"
        rows = [header]
        entries = [*self.summary["tasks"].items(), ("overall", self.summary["overall"])]
        for name, s in entries:
            ret = "-" if s["return_mean"] is None else f"{s['return_mean']:.2f} ± {s['return_std']:.2f}"
            success = "-" if s["success_rate"] is None else f"{100 * s['success_rate']:.0f}%"
            rate = "-" if s["env_steps_per_s"] is None else f"{s['env_steps_per_s']:.0f}"
            label = name if len(name) <= 40 else "..." + name[-37:]
            rows.append(f"{label:<40} {s['episodes']:>8} {s['errors']:>6} {ret:>18} {success:>7} {rate:>9}")
        return "\n".join(rows)

    def plot(self, path: str | os.PathLike[str]) -> None:
        """Save a histogram of returns per task (needs matplotlib, which rlmesh does not install).

        Raises:
            InvalidArgumentError: matplotlib is not installed.
        """
        plt = pyplot()
        tasks = self.tasks or ["(none)"]
        fig, axes = plt.subplots(len(tasks), 1, figsize=(7, 2.2 * len(tasks) + 0.6), squeeze=False)
        for ax, task in zip(axes[:, 0], tasks, strict=True):
            returns = [r["return"] for r in self.episodes if r["task"] == task and r["error"] is None]
            stats = self.summary["tasks"].get(task)
            ax.hist(returns, bins=min(30, max(5, len(returns) // 2)), color="#4c72b0", edgecolor="white")
            title = task
            if stats and stats["return_mean"] is not None:
                title += f"  (mean {stats['return_mean']:.1f} ± {stats['return_std']:.1f}, n={len(returns)}"
                title += f", errors {stats['errors']})" if stats["errors"] else ")"
            ax.set_title(title, fontsize=9)
            ax.set_ylabel("episodes")
        axes[-1, 0].set_xlabel("return")
        fig.tight_layout()
        fig.savefig(os.fspath(path), dpi=110)
        plt.close(fig)


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the Agg backend.

    Raises:
        InvalidArgumentError: matplotlib is not installed (it is not an rlmesh dependency).
    """
    try:  # imported by name: an optional dependency, without type stubs here
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError as exc:
        raise InvalidArgumentError(
            f"plotting needs matplotlib, which rlmesh does not install ({exc}): pip install matplotlib, or the extra rlmesh[plot]"
        ) from None
    return plt
