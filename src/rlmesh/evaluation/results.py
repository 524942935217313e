"""The results file: append-only JSON Lines, one record per episode, written and flushed as each ends.

The first line is a header that identifies the run (sources, seeds, policy). Opening a file
that holds records resumes it: the (task, episode) pairs it holds are skipped. A file written
for other arguments is refused. A last line cut short (the machine went away mid-write) is
dropped, so the file stays valid JSON Lines.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

import orjson

from ..errors import InvalidArgumentError

__all__ = ["HEADER_KEY", "FORMAT_VERSION", "ResultsFile", "ResultsMismatchError"]

HEADER_KEY = "rlmesh_evaluation"
FORMAT_VERSION = 1


class ResultsMismatchError(InvalidArgumentError):
    """The results file was written by another run (another source, seeds or policy).

    Attributes:
        path: The file.
        differences: ``{field: (in the file, in this run)}``.
    """

    def __init__(self, message: str, *, path: str, differences: dict[str, tuple[Any, Any]]) -> None:
        super().__init__(message)
        self.path = path
        self.differences = differences


def _short(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 80 else text[:77] + "..."


class ResultsFile:
    """An open results file: the records already in it, and :meth:`append` for new ones.

    Args:
        path: The file (created with its directory when missing).
        run: What identifies the run (written as the header, compared on resume).

    Raises:
        ResultsMismatchError: The file's header names another run.
        InvalidArgumentError: The file is not an rlmesh results file.
    """

    def __init__(self, path: str | os.PathLike[str], run: dict[str, Any]) -> None:
        self.path = Path(path)
        self.run = run
        self.records: list[dict[str, Any]] = []
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
            self._write({HEADER_KEY: FORMAT_VERSION, "run": run})

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
        if differences:
            what = "; ".join(f"{k}: {_short(old)} in the file, {_short(new)} now" for k, (old, new) in differences.items())
            raise ResultsMismatchError(
                f"{self.path} holds results of another run ({what}). To resume it, run it with the same "
                "source, seeds and policy; to start a new one, give another results path or remove this file",
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
