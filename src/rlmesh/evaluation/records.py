"""Episode records and faults: what one (task, episode) produced, and how a failure is recorded.

A record is a plain dict with the keys of a line of the results file (:data:`RECORD_KEYS`).
Failures fall in two kinds: the env's own (it exited, raised, hung or failed to start), recorded
as the episode's ``error``, and the infrastructure's (the engine or the connection went away),
which the runner may retry.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import (
    DockerUnavailableError,
    RemoteEnvError,
    RLMeshTimeoutError,
    SandboxError,
    SandboxExitedError,
    SandboxStartError,
    TransportError,
)

__all__ = ["LOG_TAIL_LINES", "RECORD_KEYS", "EpisodeTimeout", "error_of", "is_infrastructure", "make_record"]

RECORD_KEYS = ("task", "episode", "seed", "return", "length", "terminated", "truncated", "success", "seconds",
               "attempts", "error", "video", "image")
LOG_TAIL_LINES = 20


class EpisodeTimeout(Exception):
    """An episode ran past ``episode_timeout`` (raised inside the runner, recorded as a timeout)."""

    def __init__(self, seconds: float, logs: str = "") -> None:
        super().__init__(f"the episode ran past episode_timeout={seconds:g}s: the env hung, or needs longer "
                         "(then raise episode_timeout=)")
        self.seconds = seconds
        self.logs = logs  # what the container had printed when the episode was given up


def make_record(task: str, episode: int, seed: int, *, total: float | None, length: int, terminated: bool = False,
                truncated: bool = False, success: bool | None = None, seconds: float, attempts: int,
                error: dict[str, Any] | None = None, video: str | None = None,
                image: str | None = None) -> dict[str, Any]:
    """One episode's record, with the keys in :data:`RECORD_KEYS` order."""
    return {
        "task": task, "episode": episode, "seed": seed,
        "return": total if total is None or math.isfinite(total) else repr(total),
        "length": length, "terminated": terminated, "truncated": truncated, "success": success,
        "seconds": round(seconds, 6), "attempts": attempts, "error": error, "video": video,
        "image": image,
    }


def _tail(text: str) -> str | None:
    lines = text.rstrip().splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:]) if lines else None


def error_of(exc: BaseException) -> dict[str, Any]:
    """The ``error`` field for a failure: ``{type, message, exit_code, log_tail}``.

    ``type`` is ``exit`` (the container exited), ``exception`` (the env raised), ``timeout``,
    ``start`` (the sandbox did not become ready), ``infrastructure`` (retries exhausted), or
    ``sandbox`` (other container trouble).
    """
    exit_code: int | None = None
    log_tail: str | None = None
    if isinstance(exc, (EpisodeTimeout, RLMeshTimeoutError, TimeoutError)):
        kind = "timeout"
        if isinstance(exc, EpisodeTimeout):
            log_tail = _tail(exc.logs)
    elif isinstance(exc, RemoteEnvError):
        kind = "exception"
        log_tail = _tail(exc.remote_traceback)
        return {"type": kind, "message": f"{exc.remote_type}: {exc.remote_message}", "exit_code": None,
                "log_tail": log_tail}
    elif isinstance(exc, SandboxExitedError):
        kind = "exit"
    elif isinstance(exc, SandboxStartError):
        kind = "start"
    elif is_infrastructure(exc):
        kind = "infrastructure"
    else:
        kind = "sandbox"
    if isinstance(exc, SandboxError):
        exit_code, log_tail = exc.exit_code, _tail(exc.logs)
        message = exc.message
    else:
        message = str(exc) or type(exc).__name__
    return {"type": kind, "message": message.splitlines()[0] if message else type(exc).__name__,
            "exit_code": exit_code, "log_tail": log_tail}


def is_infrastructure(exc: BaseException) -> bool:
    """Whether a failure is the infrastructure's (retried), not the env's (recorded).

    The engine going away, a container killed through the engine or by its engine stopping
    (``SandboxExitedError.killed_by``), and a connection lost while the container is not known to
    have exited are the infrastructure's. A container that exited by itself (crash, ``os._exit``,
    out of memory), an env that raised or hung, and a start whose container exited are the env's.
    """
    if isinstance(exc, SandboxExitedError):
        return exc.killed_by in ("engine", "stopped")
    if isinstance(exc, (SandboxStartError, RemoteEnvError)):
        return False
    return isinstance(exc, (DockerUnavailableError, TransportError))
