"""The env server: the only rlmesh code that runs inside a sandbox.

It imports numpy, orjson and gymnasium only (plus the standard library). What lives here:

    core             EnvServer: one env served to one client at a time over a stream (its lifecycle)
    options          ServerOptions: every server option, checked once
    connection       each connection's side of the handshake, and the one client slot
    dispatch         a request applied to the env, its reply encoded (no sockets)
    loader           a source (Gymnasium id, module:factory, envhub: checkout) -> the env
    serve            the ``rlmesh serve`` command (``python -m rlmesh.serve`` is its entry point)
    data_plane       the shared-memory region a client on the same host hands over
    handoff          connections a relay passes over a Unix socket (SCM_RIGHTS)
    envhub           Hugging Face EnvHub checkouts: make_env as LeRobot calls it, one env picked
    envhub_selector  the ``[ENTRY.py][:SUITE[/TASK]]`` grammar (shared with the host)
    envhub_tasks     ``python -m rlmesh.server.envhub_tasks``: list a checkout's envs
    check            ``python -m rlmesh.server.check``: the image build's import check
"""

from __future__ import annotations

from .core import EnvServer
from .loader import check_imports, load_env

__all__ = ["EnvServer", "check_imports", "load_env"]
