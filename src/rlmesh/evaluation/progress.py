"""Progress of an evaluation: a live bar on a terminal, log lines otherwise, or a callback.

``progress=`` of :func:`~rlmesh.evaluate`: ``None`` (the default) shows a bar when stderr is a
terminal and ``tqdm`` (the ``rlmesh[progress]`` extra) is installed, else plain lines on stderr
(``evaluate: 12/40 episodes, ...``, at most one every few seconds, and the last), as in a script
or a CI log, whatever logging is configured; ``True`` always shows the bar (plain lines without
tqdm); ``False`` is silent; a callable receives each episode's record as it is written.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, cast

from ..errors import InvalidArgumentError

__all__ = ["EvaluationProgress", "ProgressOption", "check_progress"]

ProgressOption = bool | Callable[[dict[str, Any]], Any] | None
LOG_EVERY = 5.0


def check_progress(option: Any) -> ProgressOption:
    """Check ``progress=``.

    Raises:
        InvalidArgumentError: Not None, a bool, or a callable.
    """
    if option is None or isinstance(option, bool) or callable(option):
        return cast(ProgressOption, option)
    raise InvalidArgumentError(f"progress must be None, True, False or a callable taking a record, got {option!r}")


class EvaluationProgress:
    """Counts episodes, errors, the running mean return and env-steps/s, and shows them.

    Args:
        option: ``progress=`` (see the module docstring).
        total: Episodes in the run, finished ones included.
        done: Episodes already finished (a resumed run).
    """

    def __init__(self, option: ProgressOption, total: int, done: int = 0) -> None:
        self.callback = option if callable(option) and not isinstance(option, bool) else None
        self.total = total
        self.done = done
        self.errors = 0
        self.returns_sum = 0.0
        self.returns_n = 0
        self.steps = 0
        self.started = time.monotonic()
        self._last_log = self.started
        self._bar: Any = None
        self._lines = option is None or option is True
        if option is True or (option is None and sys.stderr.isatty()):
            try:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, initial=done, unit="ep", desc="evaluate", file=sys.stderr,
                                 dynamic_ncols=True)
                self._lines = False
            except ImportError:
                pass

    def _status(self) -> dict[str, str]:
        mean = f"{self.returns_sum / self.returns_n:.2f}" if self.returns_n else "-"
        elapsed = time.monotonic() - self.started
        rate = f"{self.steps / elapsed:.0f}" if elapsed > 0 else "-"
        return {"errors": str(self.errors), "mean_return": mean, "steps/s": rate}

    def update(self, record: dict[str, Any]) -> None:
        """Account for one finished episode (called after it is on disk)."""
        self.done += 1
        self.steps += int(record["length"] or 0)
        if record["error"] is not None:
            self.errors += 1
        elif isinstance(record["return"], (int, float)):
            self.returns_sum += record["return"]
            self.returns_n += 1
        if self.callback is not None:
            self.callback(record)
        if self._bar is not None:
            self._bar.set_postfix(self._status(), refresh=False)
            self._bar.update(1)
        elif self._lines:
            now = time.monotonic()
            if now - self._last_log >= LOG_EVERY or self.done == self.total:
                self._last_log = now
                s = self._status()
                print(f"evaluate: {self.done}/{self.total} episodes, {s['errors']} errors, mean return "
                      f"{s['mean_return']}, {s['steps/s']} env-steps/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Close the bar. Idempotent."""
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.close()
