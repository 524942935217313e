"""The grammar of an EnvHub selector: what may follow ``hf://owner/repo[@revision]:``.

Shared by the host (which checks a source before anything is fetched) and the server inside a
sandbox (which checks it again before it loads anything); standard library only::

    SELECTOR := ENTRY | PICK | ENTRY ":" PICK
    ENTRY    := [DIR "/" ...] NAME ".py"     a Python file of the repository (default env.py)
    PICK     := SUITE ["/" TASK]             one suite, or one task of a suite

A selector whose first part ends in ``.py`` names a file; anything else names a suite. An entry
file is a relative path inside the repository: no empty, ``.`` or ``..`` part, nothing hidden,
nothing absolute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import SourceError

__all__ = ["DEFAULT_ENTRY", "HubSelector", "parse_selector"]

DEFAULT_ENTRY = "env.py"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # a suite or a task
_DIR = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # no '.', '..' or hidden directory
_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*\.py$")  # an importable module name, then .py


@dataclass(frozen=True)
class HubSelector:
    """A parsed selector.

    Attributes:
        entry: The entry file, relative to the repository root (None: ``env.py``).
        suite: The suite to pick, or None.
        task: The task of ``suite`` to pick, or None.
    """

    entry: str | None = None
    suite: str | None = None
    task: str | None = None

    def __str__(self) -> str:
        pick = None if self.suite is None else self.suite if self.task is None else f"{self.suite}/{self.task}"
        return ":".join(part for part in (self.entry, pick) if part is not None)


def parse_selector(text: str) -> HubSelector:
    """Parse a selector (``envs/x.py``, ``suite``, ``suite/task``, ``envs/x.py:suite/task``).

    Raises:
        SourceError: The selector is malformed; the message says why.
    """
    parts = text.split(":")
    if len(parts) > 2:
        raise SourceError("a selector has at most two parts, ENTRY.py:SUITE/TASK")
    entry: str | None = None
    if parts[0].endswith(".py"):
        entry = _check_entry(parts.pop(0))
    elif len(parts) == 2:
        raise SourceError(f"the part before the second ':' must be an entry file ending in .py, not {parts[0]!r}")
    if not parts:
        return HubSelector(entry)
    suite, slash, task_text = parts[0].partition("/")
    task = task_text if slash else None
    for what, name in (("suite", suite), ("task", task)):
        if name is not None and not _NAME.match(name):
            why = "is empty" if not name else "may hold only letters, digits, '_', '.' and '-'"
            raise SourceError(f"the {what} {name!r} {why}: use :SUITE or :SUITE/TASK")
    return HubSelector(entry, suite, task)


def _check_entry(path: str) -> str:
    if path.startswith("/"):
        raise SourceError(f"the entry file {path!r} is absolute: name a file relative to the repository root")
    *dirs, name = path.split("/")
    for part in dirs:
        if part in ("", ".", ".."):
            what = f"a {part!r}" if part else "an empty"
            raise SourceError(f"the entry file {path!r} has {what} part: "
                              "name a file inside the repository, e.g. envs/my_env.py")
        if not _DIR.match(part):
            raise SourceError(f"the directory {part!r} of the entry file {path!r} is not allowed "
                              "(letters, digits, '_', '.', '-'; not hidden)")
    if not _FILE.match(name):
        raise SourceError(f"the entry file name {name!r} must be a module name (letters, digits, '_', '-') "
                          "followed by .py")
    return path
