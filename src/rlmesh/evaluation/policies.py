"""Policy adapters for the evaluation harness: plain, async, batched and ``"random"`` policies.

A policy is one of:

* a callable ``obs -> action`` (called on the event loop's thread, once per step of an episode);
* an ``async`` callable ``obs -> action`` (for a policy served elsewhere);
* ``"random"``: samples the action space, seeded with the episode's seed;
* a :class:`BatchedPolicy`, made by :func:`batched`: ``obs[N, ...] -> actions[N]`` over the
  lanes of one vector sandbox, so that N episodes run as lanes of one ``SandboxVectorEnv``.
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast, overload

import gymnasium as gym

from .._checks import is_int
from .._imports import import_attribute
from ..errors import InvalidArgumentError

__all__ = ["DEFAULT_LANES", "Acting", "BatchedPolicy", "Policy", "batched", "load_policy", "maybe_await", "policy_name",
           "resolve_policy"]

DEFAULT_LANES = 16


class BatchedPolicy:
    """A policy that acts on a batch of lanes: ``fn(obs[N, ...]) -> actions[N]`` (sync or async).

    Made by :func:`batched`. Calling it calls ``fn``.

    Attributes:
        fn: The wrapped callable.
        lanes: How many episodes run at once as lanes of one vector sandbox.
    """

    def __init__(self, fn: Callable[[Any], Any], lanes: int = DEFAULT_LANES) -> None:
        if not callable(fn):
            raise InvalidArgumentError(f"batched() takes a callable obs[N, ...] -> actions[N], got {fn!r}")
        if not is_int(lanes) or lanes < 1:
            raise InvalidArgumentError(f"lanes must be a positive int, got {lanes!r}")
        self.fn = fn
        self.lanes = lanes
        self.__doc__ = getattr(fn, "__doc__", None) or type(self).__doc__
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        self.__module__ = getattr(fn, "__module__", None) or __name__

    def __call__(self, obs: Any) -> Any:
        return self.fn(obs)

    def __repr__(self) -> str:
        return f"batched({self.__qualname__}, lanes={self.lanes})"


@overload
def batched(fn: Callable[[Any], Any], *, lanes: int = DEFAULT_LANES) -> BatchedPolicy: ...
@overload
def batched(fn: None = None, *, lanes: int = DEFAULT_LANES) -> Callable[[Callable[[Any], Any]], BatchedPolicy]: ...


def batched(fn: Callable[[Any], Any] | None = None, *, lanes: int = DEFAULT_LANES) -> Any:
    """Mark a policy as batched: it maps ``obs[N, ...]`` to ``actions[N]`` for N lanes at once.

    :func:`~rlmesh.evaluate` then runs up to ``lanes`` episodes as the lanes of one vector sandbox
    (one container), each lane reset with its own episode's seed, instead of one episode per
    sandbox. Use it as ``batched(fn)``, ``@batched`` or ``@batched(lanes=64)``.

    Args:
        fn: ``obs[N, ...] -> actions[N]``, sync or ``async``.
        lanes: Episodes per sandbox at once (default 16; fewer when there are fewer episodes).

    Returns:
        A :class:`BatchedPolicy` (or, without ``fn``, a decorator making one).

    Raises:
        InvalidArgumentError: ``fn`` is not callable, or ``lanes`` is not a positive int.
    """
    if fn is None:
        return lambda f: BatchedPolicy(f, lanes)
    return BatchedPolicy(fn, lanes)


Policy = Callable[[Any], Any] | BatchedPolicy | str


def policy_name(policy: Any) -> str:
    """A stable name for a policy (``module:qualname``, or ``random``), recorded with the results."""
    if isinstance(policy, str):
        return policy
    fn = policy.fn if isinstance(policy, BatchedPolicy) else policy
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    prefix = f"batched[{policy.lanes}]:" if isinstance(policy, BatchedPolicy) else ""
    return f"{prefix}{module}:{name}"


def load_policy(spec: str) -> Policy:
    """Resolve a command-line policy: ``random`` or ``MODULE:NAME`` (imported here, on the host).

    The current directory is on the import path, as for ``python -m``.

    Raises:
        InvalidArgumentError: Not ``random`` or ``MODULE:NAME``, the module does not import, it has
            no such name, or the name is not callable.
    """
    if spec == "random":
        return spec
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidArgumentError(f"--policy must be 'random' or MODULE:NAME (a callable obs -> action), got {spec!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        obj = import_attribute(module_name, attr)
    except ImportError as exc:
        raise InvalidArgumentError(f"cannot import the policy's module {module_name!r}: {exc}") from exc
    except AttributeError:
        raise InvalidArgumentError(f"module {module_name!r} has no policy {attr!r}") from None
    if not callable(obj):
        raise InvalidArgumentError(f"policy {spec!r} is not callable")
    return cast(Policy, obj)


@dataclass
class Acting:
    """How the runner calls a policy: per lane or batched, sync or async."""

    name: str
    batched: bool
    lanes: int
    fn: Callable[[Any], Any] | None  # None for "random"
    is_async: bool

    def fresh_sampler(self, space: gym.Space[Any], seed: int) -> gym.Space[Any]:
        """A copy of ``space`` seeded with an episode's seed (the ``random`` policy)."""
        sampler = copy.deepcopy(space)
        sampler.seed(seed)
        return sampler


def resolve_policy(policy: Any) -> Acting:
    """Check ``policy`` and say how to call it.

    Raises:
        InvalidArgumentError: A string other than ``"random"``, or not callable.
    """
    if isinstance(policy, str):
        if policy != "random":
            raise InvalidArgumentError(
                f"unknown policy {policy!r}: give a callable obs -> action, an async callable, batched(fn), "
                "or 'random' (on the command line: --policy MODULE:NAME or --policy random)"
            )
        return Acting("random", False, 1, None, False)
    if isinstance(policy, BatchedPolicy):
        return Acting(policy_name(policy), True, policy.lanes, policy.fn, _is_async(policy.fn))
    if not callable(policy):
        raise InvalidArgumentError(f"policy must be a callable obs -> action, batched(fn) or 'random', got {policy!r}")
    return Acting(policy_name(policy), False, 1, policy, _is_async(policy))


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004  (an object whose __call__ is a coroutine function, not a test for callable)


async def maybe_await(value: Any) -> Any:
    """``await value`` when it is awaitable (an async policy's result), else ``value``."""
    if inspect.isawaitable(value):
        return await value
    return value

