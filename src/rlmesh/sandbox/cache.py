"""Where rlmesh keeps files on this host: ``RLMESH_CACHE_DIR``, else ``$XDG_CACHE_HOME/rlmesh``.

Wheels, Debian packages, remembered pull failures and image use times live under it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """rlmesh's cache directory (``RLMESH_CACHE_DIR`` or ``$XDG_CACHE_HOME/rlmesh``)."""
    root = os.environ.get("RLMESH_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rlmesh"
