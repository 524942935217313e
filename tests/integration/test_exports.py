"""The public API is pinned: a change to it must change this test."""

from __future__ import annotations

import subprocess
import sys

import rlmesh
import rlmesh.numpy

PUBLIC = [
    "AsyncRemoteEnv",
    "AsyncRemoteVectorEnv",
    "AsyncSandboxEnv",
    "AsyncSandboxVectorEnv",
    "AuthenticationError",
    "EnvServer",
    "EvaluationReport",
    "RLMeshError",
    "RemoteEnv",
    "RemoteEnvError",
    "RemoteVectorEnv",
    "SandboxEnv",
    "SandboxError",
    "SandboxVectorEnv",
    "__version__",
    "batched",
    "evaluate",
    "evaluate_async",
    "list_tasks",
]
NUMPY = [
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


def test_exports_are_pinned() -> None:
    assert rlmesh.__all__ == sorted(PUBLIC)
    assert rlmesh.numpy.__all__ == NUMPY
    for name in NUMPY:
        assert getattr(rlmesh, name) is getattr(rlmesh.numpy, name)
    for name in PUBLIC:
        assert getattr(rlmesh, name) is not None
        if name != "__version__":
            assert getattr(rlmesh, name).__doc__, f"{name} has no docstring"


def test_server_side_imports_no_client_dependency() -> None:
    # What runs inside a sandbox must import only numpy, orjson and gymnasium (and the stdlib).
    code = (
        "import sys, rlmesh.serve, rlmesh.server, rlmesh.server.envhub, rlmesh.server.check\n"
        "bad = sorted(m for m in ('anyio', 'aiodocker', 'aiohttp', 'huggingface_hub') if m in sys.modules)\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
