"""Types shared by the server modules."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

EnvLike = gym.Env[Any, Any] | gym.vector.VectorEnv[Any, Any, Any]
"""A single env or a vector env: what a server serves."""
