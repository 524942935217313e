"""The sync shell: gymnasium.Env / VectorEnv classes over the async core.

Each method hands the async core's work to the one shared event-loop thread
(:mod:`rlmesh._portal`) and waits. The classes hold no logic of their own beyond
that hand-off, so the sync and async APIs behave identically.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, ClassVar, Generic, Literal, TypeVar

import gymnasium as gym
import numpy as np
from gymnasium.vector import VectorEnv

from . import _portal
from .client.caller_thread import send_plan
from .client.core import AsyncEnvCore, AsyncVectorCore
from .client.env import AsyncRemoteEnv
from .client.vector import AsyncRemoteVectorEnv
from .errors import RemoteEnvError

__all__ = ["RemoteEnv", "RemoteVectorEnv", "SyncEnvShell", "SyncVectorEnvShell"]

EnvCoreT = TypeVar("EnvCoreT", bound=AsyncEnvCore)
VectorCoreT = TypeVar("VectorCoreT", bound=AsyncVectorCore)


def _start(shell: Any, core: AsyncEnvCore | AsyncVectorCore) -> None:
    # Start the core on the shared loop (close it again if that fails or is interrupted),
    # then take over its spaces.
    shell._core = core
    try:
        _portal.call(core.start)
    except BaseException:
        _portal.call(core.close)
        raise
    shell.observation_space = core.observation_space
    shell.action_space = core.action_space
    shell.render_mode = core.render_mode
    shell.spec = core.spec


def _close(shell: Any) -> None:
    core = shell.__dict__.get("_core")
    if core is not None and not core.closed:
        _portal.call(core.close)


class _AnyRenderMode(tuple[str, ...]):
    """The class-level ``render_modes``: any mode may be asked for; the remote env judges it."""

    def __contains__(self, mode: object) -> bool:
        return True

    def __repr__(self) -> str:
        return "<any: judged by the remote env>"


class _RemoteMetadata:
    """``metadata``: on a shell, the remote env's (or what was assigned to the shell); on the class, a dict.

    ``gym.make`` reads its creator's *class* metadata to judge a requested render mode: Gymnasium
    1.4 skips a property, but 1.1-1.3 require a dict. A remote env's render modes are known only once
    it runs, so the class says that every mode is admitted and the env itself judges the mode.
    """

    def __get__(self, shell: Any, owner: type | None = None) -> dict[str, Any]:
        if shell is None:
            return {"render_modes": _AnyRenderMode()}
        own: dict[str, Any] | None = shell.__dict__.get("_own_metadata")
        if own is not None:
            return own
        remote: dict[str, Any] = shell._core.metadata
        return remote

    def __set__(self, shell: Any, value: dict[str, Any]) -> None:
        shell._own_metadata = value  # the shell's own; the core keeps what the remote env said


class SyncEnvShell(gym.Env[Any, Any], Generic[EnvCoreT]):
    """A ``gymnasium.Env`` that runs an async single-env core on the shared loop.

    Attributes that the shell does not have are read from the remote env
    (``env.unwrapped.gravity``), as are :meth:`get_wrapper_attr` lookups.
    """

    _core: EnvCoreT
    metadata = _RemoteMetadata()

    def __init__(self, core: EnvCoreT) -> None:
        _start(self, core)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Reset the env, as ``gymnasium.Env.reset``."""
        super().reset(seed=seed)
        return send_plan(self._core.plan_reset(seed, options))

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        """Step the env, as ``gymnasium.Env.step``."""
        return send_plan(self._core.plan_step(action))

    def render(self) -> Any:
        """Render the env; rgb frames come back as arrays."""
        return send_plan(self._core.plan_render())

    def close(self) -> None:
        """Close the env (and its sandbox, if any). Idempotent."""
        _close(self)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._core.closed

    @property
    def remote_spec(self) -> Any:
        """What the server says about its env's spec, as plain data (never used to make anything)."""
        return self._core.remote_spec

    def get_wrapper_attr(self, name: str) -> Any:
        """The attribute ``name`` of this shell, or else of the remote env (through its wrappers)."""
        try:
            return object.__getattribute__(self, name)
        except AttributeError:
            return _portal.call(functools.partial(self._core.get_wrapper_attr, name))

    def set_wrapper_attr(self, name: str, value: Any, *, force: bool = True) -> bool:
        """Set the remote env's attribute ``name`` (the shell's own attributes are local)."""
        if name in self.__dict__ or hasattr(type(self), name):
            setattr(self, name, value)
        else:
            _portal.call(functools.partial(self._core.set_wrapper_attr, name, value))
        return True

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the remote env's method ``name``."""
        return _portal.call(functools.partial(self._core.call, name, *args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: public names are the remote env's.
        if name.startswith("_") or "_core" not in self.__dict__ or self._core.closed:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        try:
            return _portal.call(functools.partial(self._core.get_wrapper_attr, name))
        except RemoteEnvError as exc:
            if isinstance(exc, AttributeError):
                raise AttributeError(f"neither {type(self).__name__} nor the remote env has an attribute {name!r}") from exc
            raise

    def __enter__(self) -> SyncEnvShell[EnvCoreT]:
        return self

    def __exit__(self, *exc_info: object) -> Literal[False]:
        self.close()
        return False

    def __repr__(self) -> str:
        return repr(self._core).replace("Async", "", 1)


class SyncVectorEnvShell(VectorEnv[Any, Any, Any], Generic[VectorCoreT]):
    """A ``gymnasium.vector.VectorEnv`` that runs an async vector core on the shared loop."""

    _core: VectorCoreT
    metadata = _RemoteMetadata()

    def __init__(self, core: VectorCoreT) -> None:
        _start(self, core)
        self.num_envs = core.num_envs
        self.single_observation_space = core.single_observation_space
        self.single_action_space = core.single_action_space

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset all lanes (or those in ``options["reset_mask"]``), as ``VectorEnv.reset``."""
        if isinstance(seed, int) and not isinstance(seed, bool):
            self._np_random, self._np_random_seed = gym.utils.seeding.np_random(seed)
        return send_plan(self._core.plan_reset(seed, options))

    def step(self, actions: Any) -> tuple[Any, np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any], dict[str, Any]]:
        """Step every lane, as ``VectorEnv.step`` (every shard's request is written at once)."""
        result = send_plan(self._core.plan_step(actions))
        if self._core.recovering:  # a shard failed and is replaced (restarts=)
            recovered: tuple[Any, Any, Any, Any, dict[str, Any]] = _portal.call(
                functools.partial(self._core.recover, result))
            return recovered
        return result

    def render(self) -> Any:
        """Render every lane."""
        return send_plan(self._core.plan_render())

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call ``name`` on every lane, as ``VectorEnv.call``."""
        return _portal.call(functools.partial(self._core.call, name, *args, **kwargs))

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """Every lane's attribute ``name``, as ``VectorEnv.get_attr``."""
        return _portal.call(functools.partial(self._core.get_attr, name))

    def set_attr(self, name: str, values: list[Any] | tuple[Any, ...] | Any) -> None:
        """Set ``name`` on every lane (one value, or one per lane), as ``VectorEnv.set_attr``."""
        _portal.call(functools.partial(self._core.set_attr, name, values))

    @property
    def remote_spec(self) -> Any:
        """What the server says about its env's spec, as plain data."""
        return self._core.remote_spec

    @property
    def np_random_seed(self) -> Any:
        """Each lane's seed, as ``SyncVectorEnv.np_random_seed`` (a native vector env: its own)."""
        try:
            return self.get_attr("np_random_seed")
        except AttributeError:  # the remote vector env has no get_attr
            return self._np_random_seed

    def close_extras(self, **kwargs: Any) -> None:
        """Close the connection (and the sandbox, if any)."""
        _close(self)

    def __enter__(self) -> SyncVectorEnvShell[VectorCoreT]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return repr(self._core).replace("Async", "", 1)


class RemoteEnv(SyncEnvShell[AsyncRemoteEnv]):
    """An env served by ``rlmesh serve``, as a plain ``gymnasium.Env``.

    Construction connects and handshakes. Example::

        env = RemoteEnv("unix:///tmp/cartpole.sock")
        obs, info = env.reset(seed=0)

    Takes the arguments of :class:`~rlmesh.client.env.AsyncRemoteEnv`.
    """

    __signature__: ClassVar[inspect.Signature] = inspect.signature(AsyncRemoteEnv)

    def __init__(self, address: str, **options: Any) -> None:
        super().__init__(AsyncRemoteEnv(address, **options))


class RemoteVectorEnv(SyncVectorEnvShell[AsyncRemoteVectorEnv]):
    """A vector env served by ``rlmesh serve --num-envs N``, as a ``gymnasium.vector.VectorEnv``.

    Takes the arguments of :class:`~rlmesh.client.env.AsyncRemoteEnv`. ``address`` may be a list:
    one vector env over those servers, lanes in order, seeds offset per server.
    """

    __signature__: ClassVar[inspect.Signature] = inspect.signature(AsyncRemoteVectorEnv)

    def __init__(self, address: str | list[str], **options: Any) -> None:
        super().__init__(AsyncRemoteVectorEnv(address, **options))
