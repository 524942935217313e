"""The async client core: one connection to an env server, speaking the protocol."""

from __future__ import annotations

from .connection import ClientConnection
from .env import AsyncRemoteEnv, RemoteShard
from .shards import AsyncShardedVectorEnv
from .vector import AsyncRemoteVectorEnv

__all__ = ["AsyncRemoteEnv", "AsyncRemoteVectorEnv", "AsyncShardedVectorEnv", "ClientConnection", "RemoteShard"]
