"""Progress of image builds and pulls: a status line on a terminal, log records otherwise.

``progress=`` on the sandbox classes: ``None`` (the default) shows a status line when stderr is
a terminal (``tqdm``, the extra ``rlmesh[progress]``; plain lines without it) and only logs
otherwise; ``True`` always shows it; ``False`` only logs; a callable receives every
:class:`BuildProgress` (and the records are logged too).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["BuildProgress", "ProgressOption", "Reporter"]

log = logging.getLogger("rlmesh.sandbox.image")


@dataclass(frozen=True)
class BuildProgress:
    """One step of an image's preparation.

    Attributes:
        phase: ``resolve`` (pip on the host), ``build`` (the engine), ``pull``, or ``done``.
        message: What happens now (``Collecting numpy``, ``Step 4/9 : RUN ...``).
        elapsed: Seconds since the preparation began.
        image: The image being prepared.
    """

    phase: str
    message: str
    elapsed: float
    image: str


ProgressOption = bool | Callable[[BuildProgress], Any] | None


def check_progress(option: Any) -> ProgressOption:
    """Check ``progress=``.

    Raises:
        InvalidArgumentError: Not None, a bool, or a callable.
    """
    from ..errors import InvalidArgumentError  # noqa: PLC0415

    if option is None or isinstance(option, bool) or callable(option):
        return option  # type: ignore[no-any-return]
    raise InvalidArgumentError(f"progress must be None, True, False or a callable, got {option!r}")


class Reporter:
    """Reports one image's preparation to the log, a terminal, and a callback."""

    def __init__(self, option: ProgressOption, image: str) -> None:
        self.image = image
        self.started = time.monotonic()
        self.callback = option if callable(option) else None
        show = option if isinstance(option, bool) else (option is None and _stderr_is_a_terminal())
        self._bar: Any = None
        self._plain = False
        if show:
            try:
                from tqdm import tqdm  # noqa: PLC0415  (the optional extra rlmesh[progress])
            except ImportError:
                self._plain = True
            else:
                self._bar = tqdm(total=None, bar_format="{desc} [{elapsed}]", file=sys.stderr, leave=False)

    def __call__(self, phase: str, message: str, *, level: int = logging.INFO) -> None:
        """Report a step (``level`` is the log level of its record)."""
        log.log(level, "%s | %s", phase, message)
        event = BuildProgress(phase, message, time.monotonic() - self.started, self.image)
        if self.callback is not None:
            self.callback(event)
        if self._bar is not None:
            self._bar.set_description_str(f"rlmesh {phase}: {message[:70]}", refresh=True)
        elif self._plain and level >= logging.INFO:
            print(f"rlmesh {phase} [{event.elapsed:4.0f}s]: {message[:100]}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """End the display (the done event is reported by the caller)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _stderr_is_a_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
