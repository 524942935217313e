"""Progress of image builds and pulls: a status line on a terminal, log records otherwise.

``progress=`` on the sandbox classes: ``None`` (the default) shows a status line when stderr is
a terminal (``tqdm``, the extra ``rlmesh[progress]``; plain lines without it, or on a terminal
that reports no width) and only logs otherwise; ``True`` always shows it; ``False`` only logs; a
callable receives every :class:`BuildProgress` (and the records are logged too).

What is shown is the step and the package (:func:`status_text`): pip's and Docker's chatter
(``WARNING: Location ... is ignored``, ``---> Using cache``, ``Removing intermediate container``)
reaches the log at debug level and the callback, never the status line.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from ..errors import InvalidArgumentError

__all__ = ["BuildProgress", "ProgressOption", "Reporter", "status_text"]

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
    if option is None or isinstance(option, bool) or callable(option):
        return cast(ProgressOption, option)
    raise InvalidArgumentError(f"progress must be None, True, False or a callable, got {option!r}")


_STEP = re.compile(r"^Step (?P<n>\d+/\d+) : (?P<cmd>.*)$")
# pip's lines that name a package, on the host (resolve) and in the build (install).
_PACKAGE = re.compile(
    r"^\s*(?P<verb>Collecting|Downloading|Processing|Building wheel for|Saved|Installing collected packages:"
    r"|Successfully installed) (?P<what>\S.*?)\s*(?:\(.*\))?$"
)
_VERBS = {
    "Collecting": "collecting", "Downloading": "downloading", "Processing": "installing",
    "Building wheel for": "building a wheel for", "Saved": "saved", "Installing collected packages:": "installing",
    "Successfully installed": "installed",
}


def _package_name(text: str) -> str:
    """``numpy-2.1.0-cp311-...whl`` or ``/opt/x/numpy-2.1.0-....whl`` as ``numpy-2.1.0``; other text as it is."""
    name = text.rsplit("/", 1)[-1]
    if name.endswith(".whl"):
        name = "-".join(name.removesuffix(".whl").split("-")[:2])
    return name


def status_text(phase: str, message: str, step: str | None = None) -> str | None:
    """What the status line shows for a progress message, or None for noise it skips.

    ``step`` is the build step being run (``step 8/19``), shown before a package it installs.
    Only ``Step N/M : ...`` lines and pip's lines that name a package are shown; pip's warnings
    and Docker's ``---> ...``, ``Removing intermediate container`` and the like are not.
    """
    if phase not in ("resolve", "build"):
        return message
    m = _STEP.match(message)
    if m is not None:
        return f"step {m['n']}: {m['cmd']}"
    m = _PACKAGE.match(message)
    if m is not None:
        what = ", ".join(_package_name(part) for part in m["what"].replace(",", " ").split())
        text = f"{_VERBS[m['verb']]} {what}"
        return f"{step}: {text}" if step and phase == "build" else text
    if phase == "resolve" and message.startswith("system packages: "):
        return message
    return None


class Reporter:
    """Reports one image's preparation to the log, a terminal, and a callback."""

    def __init__(self, option: ProgressOption, image: str) -> None:
        self.image = image
        self.started = time.monotonic()
        self.callback = option if callable(option) else None
        show = option if isinstance(option, bool) else (option is None and _stderr_is_a_terminal())
        self._bar: Any = None
        self._plain = False
        self._step: str | None = None
        self._shown: str | None = None
        if show:
            try:
                from tqdm import tqdm  # the optional extra rlmesh[progress]
            except ImportError:
                self._plain = True
            else:
                if _stderr_columns() > 0:
                    self._bar = tqdm(total=None, bar_format="{desc} [{elapsed}]", file=sys.stderr, leave=False)
                else:
                    self._plain = True  # a terminal that reports no width: tqdm would draw nothing

    def __call__(self, phase: str, message: str, *, level: int = logging.INFO) -> None:
        """Report a step (``level`` is the log level of its record)."""
        log.log(level, "%s | %s", phase, message)
        event = BuildProgress(phase, message, time.monotonic() - self.started, self.image)
        if self.callback is not None:
            self.callback(event)
        if self._bar is None and not self._plain:
            return
        m = _STEP.match(message) if phase == "build" else None
        if m is not None:
            self._step = f"step {m['n']}"
        text = status_text(phase, message, self._step)
        if text is None or text == self._shown:
            return
        self._shown = text
        if self._bar is not None:
            self._bar.set_description_str(f"rlmesh {phase}: {text[:70]}", refresh=True)
        else:
            print(f"rlmesh {phase} [{event.elapsed:4.0f}s]: {text[:100]}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """End the display (the done event is reported by the caller)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _stderr_columns() -> int:
    """The width of the terminal stderr is on (0 when it reports none, or is no terminal)."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 0


def _stderr_is_a_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
