"""The async client core: one connection to an env server, speaking the protocol."""

from __future__ import annotations

from .connection import ClientConnection
from .env import AsyncRemoteEnv, AsyncRemoteVectorEnv

__all__ = ["AsyncRemoteEnv", "AsyncRemoteVectorEnv", "ClientConnection"]
