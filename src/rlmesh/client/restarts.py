"""Restarts: a vector env's failed shard replaced, its lanes' episodes cut short, the run going on.

With ``restarts=R`` (see :class:`~rlmesh.sandbox.vector.AsyncSandboxVectorEnv`), a step whose
shard fails the way ``restart_on`` names (``"exit"``: its container exited or its connection
was lost; ``"timeout"``: no reply within ``request_timeout``; ``"exception"``: its env raised)
returns for that shard's lanes what an episode cut short returns under the autoreset mode,
while the other shards' lanes get exactly their own results:

* ``truncated=True``, ``terminated=False``, reward 0, and ``info["rlmesh_restart"]`` (with its
  ``_rlmesh_restart`` mask), the lane's restart record;
* NEXT_STEP: the lane's last observation; its next step returns the new sandbox's reset
  observation (reward 0, not done, the reset's info), whatever action it is given, as an
  autoreset does;
* SAME_STEP: the reset observation, with ``info["final_obs"]`` the last observation;
* DISABLED: the last observation; the lane needs a masked reset, as after any truncation.

The restarted shard is reset (NEXT_STEP, SAME_STEP) with each lane's **restart seed**: lane i,
last seeded with ``s`` (by a reset of the vector env), gets ``s + RESTART_SEED_STRIDE * r`` after
its shard's r-th restart; an unseeded lane gets None. The same failures replay the same way.

This module holds what restarts keep (:class:`Restarts`) and the pure parts: which failures
qualify, the records, the seeds, the results patched. The shards are replaced by the vector env.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._checks import is_int
from ..errors import InvalidArgumentError, RemoteEnvError, RLMeshError, RLMeshTimeoutError, TransportError

__all__ = ["RESTART_ON", "RESTART_SEED_STRIDE", "Restarts", "check_restarts", "failure_kind"]

log = logging.getLogger("rlmesh")

RESTART_ON = ("exit", "timeout", "exception")
RESTART_SEED_STRIDE = 1_000_003
"""Lane i's reset seed after its shard's r-th restart: its last seed plus this times r."""


def check_restarts(restarts: Any, restart_on: Any) -> tuple[int, tuple[str, ...]]:
    """``restarts=`` (an int >= 0) and ``restart_on=`` (some of :data:`RESTART_ON`).

    Raises:
        InvalidArgumentError: Either is malformed.
    """
    if not is_int(restarts) or restarts < 0:
        raise InvalidArgumentError(f"restarts must be an int >= 0 (how many shard restarts the env may make), "
                                   f"got {restarts!r}")
    if isinstance(restart_on, str) or not isinstance(restart_on, Sequence) or not restart_on or not all(
        kind in RESTART_ON for kind in restart_on
    ):
        raise InvalidArgumentError(f"restart_on must be a non-empty list of {', '.join(map(repr, RESTART_ON))}, "
                                   f"got {restart_on!r}")
    return int(restarts), tuple(dict.fromkeys(restart_on))


def failure_kind(exc: BaseException) -> str | None:
    """``"exit"``, ``"timeout"`` or ``"exception"`` for a shard's failure; None for one that is
    never restarted (a bad argument, a protocol violation)."""
    if isinstance(exc, RLMeshTimeoutError):
        return "timeout"
    if isinstance(exc, RemoteEnvError):
        return "exception"
    if isinstance(exc, TransportError) or getattr(exc, "exit_code", None) is not None or type(exc).__name__ == (
        "SandboxExitedError"
    ):
        return "exit"
    return None


def error_record(exc: BaseException) -> dict[str, Any]:
    """What a restart record says of the failure: ``type``, ``message``, ``exit_code``,
    ``killed_by`` and ``log_tail`` (the container's last lines)."""
    logs = getattr(exc, "logs", "") or ""
    return {
        "type": type(exc).__name__,
        "message": str(exc).splitlines()[0] if str(exc) else "",
        "exit_code": getattr(exc, "exit_code", None),
        "killed_by": getattr(exc, "killed_by", None),
        "log_tail": "\n".join(logs.splitlines()[-10:]),
    }


@dataclass
class Restarts:
    """A vector env's restart budget, its history, and each lane's last seed."""

    budget: int = 0
    on: tuple[str, ...] = ("exit", "timeout")
    history: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int | None] = field(default_factory=list)  # each lane's last seed (None: unseeded)
    counts: list[int] = field(default_factory=list)  # restarts per shard

    def qualifies(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a failure this env restarts a shard for (the budget aside)."""
        return self.budget > 0 and failure_kind(exc) in self.on

    def left(self) -> int:
        return self.budget - len(self.history)

    def note_reset(self, num_envs: int, seed: Any, options: dict[str, Any] | None) -> None:
        """Remember each reset lane's seed (an int seed ``s`` seeds lane i with ``s + i``)."""
        if len(self.seeds) != num_envs:
            self.seeds = [None] * num_envs
        mask = (options or {}).get("reset_mask")
        lanes = range(num_envs) if mask is None else [i for i in range(num_envs) if bool(np.asarray(mask)[i])]
        for i in lanes:
            if seed is None:
                self.seeds[i] = None
            elif isinstance(seed, (list, tuple)):
                value = seed[i]
                self.seeds[i] = None if value is None else int(value)
            else:
                self.seeds[i] = int(seed) + i

    def restart_seeds(self, a: int, b: int, r: int) -> list[int | None] | None:
        """The restart seeds of lanes ``a..b-1`` after their shard's ``r``-th restart (None if
        none of them was seeded)."""
        seeds = [self.seeds[i] if i < len(self.seeds) else None for i in range(a, b)]
        if all(s is None for s in seeds):
            return None
        return [None if s is None else s + RESTART_SEED_STRIDE * r for s in seeds]

    def record(self, shard: int, lanes: tuple[int, int], exc: BaseException) -> dict[str, Any]:
        """Add a restart to the history, log it once at WARNING, and return its record."""
        if len(self.counts) <= shard:
            self.counts += [0] * (shard + 1 - len(self.counts))
        self.counts[shard] += 1
        error = error_record(exc)
        entry: dict[str, Any] = {"time": time.time(), "shard": shard, "lanes": lanes, "restart": len(self.history) + 1,
                                 "shard_restart": self.counts[shard], "error": error}
        self.history.append(entry)
        last_line = error["log_tail"].splitlines()[-1] if error["log_tail"] else ""
        log.warning("shard %d (lanes %d..%d) failed (%s%s%s); restarting it (restart %d of %d)%s", shard, lanes[0],
                    lanes[1] - 1, error["type"], f", exit code {error['exit_code']}" if error["exit_code"] is not None
                    else "", f", killed by {error['killed_by']}" if error["killed_by"] else "", entry["restart"],
                    self.budget, f"; its last log line: {last_line}" if last_line else "")
        return entry

    def failed_restart(self, exc: RLMeshError, shard: int) -> RLMeshError:
        """``exc`` (a replacement that could not start), with the history attached and a note."""
        return self._with_history(exc, f"(the restart of shard {shard} failed, so the env cannot go on: restarts "
                                       "are tried once, never in a loop; envs.restart_history and this error's "
                                       "restart_history list them)")

    def exhausted(self, exc: RLMeshError) -> RLMeshError:
        """``exc`` (a failure past the budget), with the history attached and a note saying so."""
        return self._with_history(exc, f"(the env made all {self.budget} of its restarts: envs.restart_history and "
                                       "this error's restart_history list them)")

    def _with_history(self, exc: RLMeshError, note: str) -> RLMeshError:
        exc.restart_history = list(self.history)  # type: ignore[attr-defined]
        if note not in getattr(exc, "__notes__", ()):
            exc.add_note(note)
        return exc


def set_lanes(info: dict[str, Any], key: str, num_envs: int, a: int, b: int, values: Sequence[Any]) -> None:
    """Set an object-array info key (and its ``_key`` mask) for lanes ``a..b-1``."""
    target: np.ndarray[Any, Any] | None = info.get(key)
    if target is None or target.dtype.kind != "O":
        target = info[key] = np.full(num_envs, None, dtype=object)
        info[f"_{key}"] = np.zeros(num_envs, dtype=bool)
    mask: np.ndarray[Any, Any] = info.setdefault(f"_{key}", np.zeros(num_envs, dtype=bool))
    for i, value in zip(range(a, b), values, strict=True):
        target[i] = value
    mask[a:b] = True
