"""Sandboxes: sources, image builds and container lifecycle.

This package is the only place that talks to Docker (through ``_docker``).
"""

from __future__ import annotations

from .env import AsyncSandboxEnv, AsyncSandboxVectorEnv
from .sync import SandboxEnv, SandboxVectorEnv

__all__ = ["AsyncSandboxEnv", "AsyncSandboxVectorEnv", "SandboxEnv", "SandboxVectorEnv"]
