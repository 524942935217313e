"""rlmesh: run Gymnasium environments out of process and step them as if they were local.

Public names are imported lazily, so that the env server (which runs inside
sandboxes with only numpy, orjson and gymnasium installed) can import
``rlmesh.server`` without pulling in the client's dependencies.

What lives here (``docs/architecture.md`` draws how it fits together):

    protocol    the wire contract, sans-I/O: frames, bodies, spaces, errors, auth, reply bounds
    server      the env server, the only code that runs inside a sandbox (``rlmesh serve``)
    client      the async client core: connections, remote envs, shards, the data plane
    sandbox     envs in containers rlmesh builds, starts, owns and removes; Ray placement
    evaluation  ``evaluate`` / ``rlmesh eval``, a harness on top of the sandboxes
    sync        the sync classes (gymnasium.Env / VectorEnv) over the async core; _portal, their loop
    relay       the relay container's program (TCP clients handed to a sandbox's server)
    errors      every exception rlmesh raises;  numpy: the public API;  cli: the ``rlmesh`` command
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._imports import lazy_exports

__version__ = "0.2.0.dev0"

_EXPORTS = {
    "AsyncRemoteEnv": "rlmesh.client.env",
    "AsyncRemoteVectorEnv": "rlmesh.client.vector",
    "AsyncSandboxEnv": "rlmesh.sandbox.env",
    "AsyncSandboxVectorEnv": "rlmesh.sandbox.vector",
    "EnvServer": "rlmesh.server.core",
    "RemoteEnv": "rlmesh.sync",
    "RemoteVectorEnv": "rlmesh.sync",
    "SandboxEnv": "rlmesh.sandbox.sync_sandbox",
    "SandboxVectorEnv": "rlmesh.sandbox.sync_sandbox",
    "EvaluationReport": "rlmesh.evaluation",
    "batched": "rlmesh.evaluation",
    "evaluate": "rlmesh.evaluation",
    "evaluate_async": "rlmesh.evaluation",
    "AuthenticationError": "rlmesh.errors",
    "RLMeshError": "rlmesh.errors",
    "RemoteEnvError": "rlmesh.errors",
    "SandboxError": "rlmesh.errors",
    "list_tasks": "rlmesh.sandbox.hub_tasks",
}

__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:
    from .client.env import AsyncRemoteEnv
    from .client.vector import AsyncRemoteVectorEnv
    from .errors import AuthenticationError, RemoteEnvError, RLMeshError, SandboxError
    from .evaluation import EvaluationReport, batched, evaluate, evaluate_async
    from .sandbox.env import AsyncSandboxEnv
    from .sandbox.hub_tasks import list_tasks
    from .sandbox.sync_sandbox import SandboxEnv, SandboxVectorEnv
    from .sandbox.vector import AsyncSandboxVectorEnv
    from .server.core import EnvServer
    from .sync import RemoteEnv, RemoteVectorEnv

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
