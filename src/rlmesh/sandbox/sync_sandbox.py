"""SandboxEnv and SandboxVectorEnv: the sandbox core behind the sync shell.

Construction builds (or reuses) the image, starts the container and connects,
all on rlmesh's one shared event-loop thread.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from ..sync import SyncEnvShell, SyncVectorEnvShell
from .env import AsyncSandboxEnv, check_single_env_options
from .ownership import install_signal_handlers
from .vector import AsyncSandboxVectorEnv

__all__ = ["SandboxEnv", "SandboxVectorEnv"]


class SandboxEnv(SyncEnvShell[AsyncSandboxEnv]):
    """A ``gymnasium.Env`` running in a Docker container that rlmesh builds, starts, owns and removes.

    Example::

        env = SandboxEnv("CartPole-v1", packages=["gymnasium==1.3.0"], imports=["gymnasium"])
        try:
            obs, info = env.reset(seed=0)
        finally:
            env.close()

    Takes the arguments of :class:`~rlmesh.sandbox.env.AsyncSandboxEnv`.
    """

    __signature__: ClassVar[inspect.Signature] = inspect.signature(AsyncSandboxEnv)

    def __init__(self, source: str, **kwargs: Any) -> None:
        install_signal_handlers()  # here: the start itself runs on rlmesh's loop thread
        check_single_env_options(type(self).__name__, source, kwargs)  # the error names this class, not the core's
        super().__init__(AsyncSandboxEnv(source, **kwargs))

    @property
    def container_id(self) -> str | None:
        """The running container's id, or None."""
        return self._core.container_id

    @property
    def container_logs(self) -> str:
        """The last lines the container printed (up to 100), while it runs and after."""
        return self._core.container_logs

    @property
    def image_id(self) -> str | None:
        """The id (digest) of the image the sandbox runs, once started."""
        return self._core.image_id


class SandboxVectorEnv(SyncVectorEnvShell[AsyncSandboxVectorEnv]):
    """A ``gymnasium.vector.VectorEnv`` running in a Docker container that rlmesh owns.

    Example::

        envs = SandboxVectorEnv("CartPole-v1", num_envs=2)

    Takes the arguments of :class:`~rlmesh.sandbox.vector.AsyncSandboxVectorEnv`.
    """

    __signature__: ClassVar[inspect.Signature] = inspect.signature(AsyncSandboxVectorEnv)

    def __init__(self, source: str, num_envs: int = 1, **kwargs: Any) -> None:
        install_signal_handlers()
        super().__init__(AsyncSandboxVectorEnv(source, num_envs, **kwargs))

    @property
    def container_id(self) -> str | None:
        """The running container's id (the first shard's, with ``shards``), or None."""
        return self._core.container_id

    @property
    def container_ids(self) -> list[str | None]:
        """Every shard's container id (one, without ``shards``)."""
        return self._core.container_ids

    @property
    def image_id(self) -> str | None:
        """The id (digest) of the image the shards run, once started."""
        return self._core.image_id

    @property
    def restart_history(self) -> list[dict[str, Any]]:
        """Each shard restart (``restarts=``): see :attr:`AsyncSandboxVectorEnv.restart_history`."""
        return self._core.restart_history
