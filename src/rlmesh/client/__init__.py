"""The async client core: connections to env servers, and the envs over them.

What lives here:

    env            AsyncRemoteEnv, and the base of every env over one connection
    remote_shard   RemoteShard: a vector env's lanes on one server (and SplitStep)
    shards         AsyncShardedVectorEnv: one vector env over one or more shards
    vector         AsyncRemoteVectorEnv: the vector env over servers you run
    core           the Protocols the sync shells drive, and Exchange (requests written at once)
    options        ClientOptions: every client option, checked once
    connection     ClientConnection: the session (handshake, requests, replies checked)
    transport      the asyncio protocol that matches replies to requests
    caller_thread  sync callers writing requests and reading replies from their own thread
    listener       a Unix socket one dialling server connects to (sandboxes)
    data_plane     the shared-memory region handed to a server on the same host
    tls            tls=: encrypting a TCP connection
    actions        strict_actions: an action checked against its space before it is sent
"""

from __future__ import annotations

from .connection import ClientConnection
from .env import AsyncRemoteEnv
from .remote_shard import RemoteShard
from .shards import AsyncShardedVectorEnv
from .vector import AsyncRemoteVectorEnv

__all__ = ["AsyncRemoteEnv", "AsyncRemoteVectorEnv", "AsyncShardedVectorEnv", "ClientConnection", "RemoteShard"]
