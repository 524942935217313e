"""``python -m rlmesh.serve``: the entry point that images, sandboxes and the docs name.

The command itself lives in :mod:`rlmesh.server.serve`, beside the server it runs; this module
stays so that ``python -m rlmesh.serve`` (in prebuilt images' ENTRYPOINTs, say) keeps working.
"""

from __future__ import annotations

import sys

from .server.serve import build_parser, cannot_make_message, main

__all__ = ["build_parser", "cannot_make_message", "main"]

if __name__ == "__main__":
    sys.exit(main())
