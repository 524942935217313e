"""The sync shell: gymnasium.Env / VectorEnv classes over the async core.

Each method hands the async core's coroutine to the one shared event-loop
thread (:mod:`rlmesh._portal`) and waits. The classes hold no logic of their
own beyond that hand-off, so the sync and async APIs behave identically.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

import gymnasium as gym
import numpy as np
from gymnasium.vector import VectorEnv

from . import _portal
from .client.env import AsyncRemoteEnv, AsyncRemoteVectorEnv, _AsyncRemoteBase

__all__ = ["RemoteEnv", "RemoteVectorEnv", "SyncEnvShell", "SyncVectorEnvShell"]

CoreT = TypeVar("CoreT", bound=_AsyncRemoteBase)


def _start_and_adopt(shell: Any, core: _AsyncRemoteBase) -> None:
    # Start the core on the shared loop (close it again if that fails or is interrupted),
    # then take over its spaces and metadata.
    shell._core = core
    try:
        _portal.call(_start, core)
    except BaseException:
        _portal.call(core.close)
        raise
    shell.observation_space = core.observation_space
    shell.action_space = core.action_space
    shell.metadata = core.metadata
    shell.render_mode = core.render_mode
    shell.spec = core.spec


async def _start(core: _AsyncRemoteBase) -> None:
    # Sandboxes start (build, run, connect); remote envs connect.
    start = getattr(core, "start", None)
    if start is not None:
        await start()
    else:
        await core.connect()


def _close(shell: Any) -> None:
    core = getattr(shell, "_core", None)
    if core is not None and not core.closed:
        _portal.call(core.close)


class SyncEnvShell(gym.Env[Any, Any], Generic[CoreT]):
    """A ``gymnasium.Env`` that runs an async single-env core on the shared loop."""

    _core: CoreT

    def __init__(self, core: CoreT) -> None:
        _start_and_adopt(self, core)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Reset the env, as ``gymnasium.Env.reset``."""
        super().reset(seed=seed)
        result: tuple[Any, dict[str, Any]] = _portal.call(_reset_kw, self._core, seed, options)
        return result

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        """Step the env, as ``gymnasium.Env.step``."""
        _portal.check_caller()
        return self._core.step_from_thread(action)

    def render(self) -> Any:
        """Render the env; rgb frames come back as arrays."""
        return _portal.call(self._core.render)

    def close(self) -> None:
        """Close the env (and its sandbox, if any). Idempotent."""
        _close(self)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._core.closed

    def __enter__(self) -> SyncEnvShell[CoreT]:
        return self

    def __exit__(self, *exc_info: object) -> Literal[False]:
        self.close()
        return False

    def __repr__(self) -> str:
        return repr(self._core).replace("Async", "", 1)


class SyncVectorEnvShell(VectorEnv[Any, Any, Any], Generic[CoreT]):
    """A ``gymnasium.vector.VectorEnv`` that runs an async vector core on the shared loop."""

    _core: CoreT

    def __init__(self, core: CoreT) -> None:
        _start_and_adopt(self, core)
        self.num_envs = core.num_envs  # type: ignore[attr-defined]
        self.single_observation_space = core.single_observation_space  # type: ignore[attr-defined]
        self.single_action_space = core.single_action_space  # type: ignore[attr-defined]

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset all lanes (or those in ``options["reset_mask"]``), as ``VectorEnv.reset``."""
        if isinstance(seed, int) and not isinstance(seed, bool):
            self._np_random, self._np_random_seed = gym.utils.seeding.np_random(seed)
        result: tuple[Any, dict[str, Any]] = _portal.call(_reset_kw, self._core, seed, options)
        return result

    def step(self, actions: Any) -> tuple[Any, np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any], dict[str, Any]]:
        """Step every lane, as ``VectorEnv.step``."""
        _portal.check_caller()
        return self._core.step_from_thread(actions)

    def render(self) -> Any:
        """Render every lane."""
        return _portal.call(self._core.render)

    def close_extras(self, **kwargs: Any) -> None:
        """Close the connection (and the sandbox, if any)."""
        _close(self)

    def __enter__(self) -> SyncVectorEnvShell[CoreT]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return repr(self._core).replace("Async", "", 1)


async def _reset_kw(core: _AsyncRemoteBase, seed: Any, options: Any) -> Any:
    return await core.reset(seed=seed, options=options)


class RemoteEnv(SyncEnvShell[AsyncRemoteEnv]):
    """An env served by ``rlmesh serve``, as a plain ``gymnasium.Env``.

    Construction connects and handshakes. Example::

        env = RemoteEnv("unix:///tmp/cartpole.sock")
        obs, info = env.reset(seed=0)

    Args:
        address: ``unix:///abs/path.sock``, ``tcp://host:port`` or ``host:port``.
        connect_timeout: Seconds allowed for connecting and the handshake.
        request_timeout: Seconds allowed for each reply; None waits forever.
    """

    def __init__(self, address: str, *, connect_timeout: float | None = 10.0, request_timeout: float | None = None) -> None:
        super().__init__(AsyncRemoteEnv(address, connect_timeout=connect_timeout, request_timeout=request_timeout))


class RemoteVectorEnv(SyncVectorEnvShell[AsyncRemoteVectorEnv]):
    """A vector env served by ``rlmesh serve --num-envs N``, as a ``gymnasium.vector.VectorEnv``.

    Args:
        address: ``unix:///abs/path.sock``, ``tcp://host:port`` or ``host:port``.
        connect_timeout: Seconds allowed for connecting and the handshake.
        request_timeout: Seconds allowed for each reply; None waits forever.
    """

    def __init__(self, address: str, *, connect_timeout: float | None = 10.0, request_timeout: float | None = None) -> None:
        super().__init__(AsyncRemoteVectorEnv(address, connect_timeout=connect_timeout, request_timeout=request_timeout))
