"""The evaluation harness: score a policy over many seeded episodes in sandboxes.

A user of the sandbox layer, not a layer inside it (see docs/evaluate.md)::

    policies   policy adapters: plain, async, batched(fn), stateful objects, "random"; actions checked
    runner     one pool of sandboxes for the run's tasks, reused by reset(seed=...); faults become records
    one_lane   a plain policy's sandbox: one AsyncSandboxEnv with the vector API the runner drives
    fusing     one policy call for the lanes of every waiting sandbox (batched(fn, fuse=True))
    videos     mp4s of the first episodes of each task (an FFmpeg process, imageio-ffmpeg)
    records    an episode's record, and how a failure is recorded or retried
    results    the append-only JSON Lines file, its header, resume
    report     the records, the summary, the table and the plot
    progress   the bar, log lines or a callback
    signals    SIGINT / SIGTERM stop the run within seconds, losing nothing
    api        evaluate() and evaluate_async()
    cli        the ``rlmesh eval`` subcommand

Names load lazily, so that ``rlmesh``'s command line can add ``eval`` without importing the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._imports import lazy_exports

_EXPORTS = {
    "BatchedPolicy": "rlmesh.evaluation.policies",
    "Episode": "rlmesh.evaluation.policies",
    "EvaluationReport": "rlmesh.evaluation.report",
    "ResultsMismatchError": "rlmesh.evaluation.results",
    "batched": "rlmesh.evaluation.policies",
    "evaluate": "rlmesh.evaluation.api",
    "evaluate_async": "rlmesh.evaluation.api",
}

__all__ = ["BatchedPolicy", "Episode", "EvaluationReport", "ResultsMismatchError", "batched", "evaluate", "evaluate_async"]

if TYPE_CHECKING:
    from .api import evaluate, evaluate_async
    from .policies import BatchedPolicy, Episode, batched
    from .report import EvaluationReport
    from .results import ResultsMismatchError

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
