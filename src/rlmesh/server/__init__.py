"""The env server: the only rlmesh code that runs inside a sandbox.

It imports numpy, orjson and gymnasium only (plus the standard library).
"""

from __future__ import annotations

from .core import EnvServer
from .loader import check_imports, load_env

__all__ = ["EnvServer", "check_imports", "load_env"]
