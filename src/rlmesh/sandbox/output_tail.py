"""The last lines of a command's output, kept for the error that says why the command failed.

A build step, pip on the host, apt-get or a listing container can print without bound; what an
error carries (``logs=``) is its last :data:`TAIL_LINES` lines.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

__all__ = ["TAIL_LINES", "OutputTail", "last_lines"]

TAIL_LINES = 40
"""Lines of output an error keeps."""


class OutputTail:
    """A bounded ring of output lines: :meth:`add` each line as it comes, :meth:`text` at the end."""

    def __init__(self, lines: int = TAIL_LINES) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=lines)

    def add(self, line: str) -> str:
        """Keep ``line`` (without its line break) and return it, dropping the oldest beyond the bound."""
        line = line.rstrip("\r\n")
        self._lines.append(line)
        return line

    def clear(self) -> None:
        """Forget what was kept (a new step begins)."""
        self._lines.clear()

    def text(self) -> str:
        """The kept lines, one per line."""
        return "\n".join(self._lines)

    def lines(self) -> list[str]:
        """The kept lines, oldest first."""
        return list(self._lines)


def last_lines(output: str | Iterable[str], lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``output`` (a text, or its lines), one per line."""
    tail = OutputTail(lines)
    for line in output.splitlines() if isinstance(output, str) else output:
        tail.add(line)
    return tail.text()
