"""The results file: append-only JSON Lines, one record per episode, written and flushed as each ends.

The first line is a header that identifies the run: everything that changes an episode (the
sources, the seeds, the policy's name, the env kwargs and ``cfg``, the image's packages, imports
and base, the container's environment, the wrappers, the vector and success modes). Opening a
file that holds records resumes it: the (task, episode) pairs it holds are skipped. A file
written for other arguments is refused, naming each field that differs; a run whose seeds
extend the file's (more episodes of the same run) extends it, rewriting the header. A last line
cut short (the machine went away mid-write) is dropped, so the file stays valid JSON Lines.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

import orjson

from ..errors import InvalidArgumentError

__all__ = ["HEADER_KEY", "FORMAT_VERSION", "ResultsFile", "ResultsMismatchError"]

HEADER_KEY = "rlmesh_evaluation"
FORMAT_VERSION = 2  # 2: the run's identity covers the env's arguments and the success rule


class ResultsMismatchError(InvalidArgumentError):
    """The results file was written by another run (another source, seeds, policy, env kwargs,
    packages, ...).

    Attributes:
        path: The file.
        differences: ``{field: (in the file, in this run)}``.
    """

    def __init__(self, message: str, *, path: str, differences: dict[str, tuple[Any, Any]]) -> None:
        super().__init__(message)
        self.path = path
        self.differences = differences


def _short(value: Any) -> str:
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return text if len(text) <= 60 else text[:57] + "..."


def _seeds_text(seeds: list[Any]) -> str:
    if seeds and all(isinstance(s, int) for s in seeds) and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{len(seeds)} ({seeds[0]}..{seeds[-1]})"
    return f"{len(seeds)} ({_short(seeds)})"


def describe_difference(field: str, old: Any, new: Any) -> str:
    """A short readable diff of one identity field: ``old`` in the file, ``new`` in this run."""
    if field == "seeds" and isinstance(old, list) and isinstance(new, list):
        text = f"seeds: the file has {_seeds_text(old)}, this run {_seeds_text(new)}"
        first = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), None)
        if first is not None:
            text += f"; episode {first} has seed {old[first]!r} in the file, {new[first]!r} now"
        return text
    if isinstance(old, dict) and isinstance(new, dict):
        parts = []
        for key in sorted(set(old) | set(new)):
            if key not in old:
                parts.append(f"{key}={_short(new[key])} added")
            elif key not in new:
                parts.append(f"{key}={_short(old[key])} removed")
            elif old[key] != new[key]:
                parts.append(f"{key}: {_short(old[key])} in the file, {_short(new[key])} now")
        return f"{field}: " + ", ".join(parts)
    if old is None:
        return f"{field}: not in the file (written by an earlier rlmesh), {_short(new)} now"
    return f"{field}: {_short(old)} in the file, {_short(new)} now"


def _extends(old: Any, new: Any) -> bool:
    return isinstance(old, list) and isinstance(new, list) and len(new) > len(old) and new[:len(old)] == old


class ResultsFile:
    """An open results file: the records already in it, and :meth:`append` for new ones.

    Args:
        path: The file (created with its directory when missing).
        run: What identifies the run (written as the header, compared on resume).

    Attributes:
        extended: The number of seeds the file had when this run extends it (more episodes of
            the same run), else None.

    Raises:
        ResultsMismatchError: The file's header names another run.
        InvalidArgumentError: The file is not an rlmesh results file.
    """

    def __init__(self, path: str | os.PathLike[str], run: dict[str, Any]) -> None:
        self.path = Path(path)
        self.run = run
        self.records: list[dict[str, Any]] = []
        self.extended: int | None = None
        self._file: IO[bytes] | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self.path.read_bytes() if self.path.exists() else b""
        if data and not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]  # a record cut short: dropped, and rewritten when run again
            with self.path.open("r+b") as f:
                f.truncate(len(data))
        lines = data.splitlines()
        if lines:
            self._check_header(lines[0])
            if self.extended is not None:
                lines[0] = orjson.dumps(self._header(), option=orjson.OPT_SERIALIZE_NUMPY)
                self._rewrite(lines)
            seen: set[tuple[str, int]] = set()
            for number, line in enumerate(lines[1:], start=2):
                try:
                    record = orjson.loads(line)
                    key = (record["task"], record["episode"])
                except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                    raise InvalidArgumentError(
                        f"{self.path}, line {number}, is not an episode record ({exc}); the file was edited "
                        "by hand or by another program: fix or remove that line"
                    ) from None
                if key not in seen:
                    seen.add(key)
                    self.records.append(record)
        self._file = self.path.open("ab")
        if not lines:
            self._write(self._header())

    def _header(self) -> dict[str, Any]:
        return {HEADER_KEY: FORMAT_VERSION, "run": self.run}

    def _rewrite(self, lines: list[bytes]) -> None:
        """Replace the file by ``lines``, atomically (a new file renamed over it)."""
        tmp = self.path.with_name(self.path.name + ".rewrite")
        with tmp.open("wb") as f:
            f.write(b"".join(line + b"\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _check_header(self, line: bytes) -> None:
        try:
            header = orjson.loads(line)
        except orjson.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or HEADER_KEY not in header or not isinstance(header.get("run"), dict):
            raise InvalidArgumentError(
                f"{self.path} is not an rlmesh evaluation results file (its first line is not a header): "
                "give another results path"
            )
        theirs: dict[str, Any] = header["run"]
        differences = {k: (theirs.get(k), v) for k, v in self.run.items() if theirs.get(k) != v}
        old_seeds = differences.get("seeds", (None, None))[0]
        if set(differences) == {"seeds"} and isinstance(old_seeds, list) and _extends(*differences["seeds"]):
            self.extended = len(old_seeds)  # more episodes of the same run
            return
        if differences:
            what = "; ".join(describe_difference(k, old, new) for k, (old, new) in differences.items())
            raise ResultsMismatchError(
                f"{self.path} holds results of another run ({what}). To resume it, run it with the same arguments "
                "(more episodes of the same seeds extend it); to start a new one, give another results path or "
                "remove this file",
                path=str(self.path), differences=differences,
            )

    def _write(self, obj: dict[str, Any]) -> None:
        assert self._file is not None
        self._file.write(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def append(self, record: dict[str, Any]) -> None:
        """Write one episode's record, flushed and synced to disk before returning."""
        self._write(record)
        self.records.append(record)

    def close(self) -> None:
        """Close the file. Idempotent."""
        f, self._file = self._file, None
        if f is not None:
            f.close()
