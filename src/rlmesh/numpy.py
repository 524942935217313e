"""The numpy flavour of the rlmesh API: observations and actions are numpy arrays.

``from rlmesh.numpy import SandboxEnv`` is the documented entry point.
"""

from __future__ import annotations

from .client.env import AsyncRemoteEnv
from .client.vector import AsyncRemoteVectorEnv
from .evaluation import batched, evaluate, evaluate_async
from .sandbox.env import AsyncSandboxEnv
from .sandbox.sync_sandbox import SandboxEnv, SandboxVectorEnv
from .sandbox.vector import AsyncSandboxVectorEnv
from .sync import RemoteEnv, RemoteVectorEnv

__all__ = [
    "AsyncRemoteEnv",
    "AsyncRemoteVectorEnv",
    "AsyncSandboxEnv",
    "AsyncSandboxVectorEnv",
    "RemoteEnv",
    "RemoteVectorEnv",
    "SandboxEnv",
    "SandboxVectorEnv",
    "batched",
    "evaluate",
    "evaluate_async",
]
