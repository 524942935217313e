"""``python -m rlmesh.server.check MODULE ...``: import each module or exit naming the first that fails."""

from __future__ import annotations

import sys

from ..errors import SourceError
from .loader import check_imports


def main(argv: list[str]) -> int:
    """Check the imports named in ``argv``; returns the exit code."""
    try:
        check_imports(argv)
    except SourceError as exc:
        print(f"rlmesh: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
