"""Policy adapters for the evaluation harness: plain, async, batched and ``"random"`` policies.

A policy is one of:

* a callable ``obs -> action`` (called on the event loop's thread, once per step of an episode);
* an ``async`` callable ``obs -> action`` (for a policy served elsewhere);
* ``"random"``: samples the action space, seeded with the episode's seed;
* a :class:`BatchedPolicy`, made by :func:`batched`: ``obs[N, ...] -> actions[N]`` over the
  lanes of one vector sandbox, so that N episodes run as lanes of one ``SandboxVectorEnv``;
* a stateful object: ``reset(episode)`` (optional, before each episode's first action) and
  ``act(obs, episode)`` or ``__call__(obs)``; ``episode`` is an :class:`Episode` (a batched
  policy's ``act`` gets the list of its lanes' episodes, None for a lane without one).

An action is checked against the action space before it is sent: a policy that returns what the
space cannot hold (a string for Discrete, the wrong shape for a Box) stops the run with an
:class:`~rlmesh.errors.InvalidActionError` naming the policy and the episode. A Box action's
bounds are the env's to judge, as in process.
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast, overload

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .._checks import is_int
from .._imports import import_attribute
from ..errors import InvalidActionError, InvalidArgumentError

__all__ = ["DEFAULT_LANES", "Acting", "BatchedPolicy", "Episode", "Policy", "action_fits", "batched", "load_policy",
           "maybe_await", "policy_name", "resolve_policy"]

DEFAULT_LANES = 16


class BatchedPolicy:
    """A policy that acts on a batch of lanes: ``fn(obs[N, ...]) -> actions[N]`` (sync or async).

    Made by :func:`batched`. Calling it calls ``fn``.

    Attributes:
        fn: The wrapped callable.
        lanes: How many episodes run at once as lanes of one vector sandbox.
        fuse: Whether one call serves the lanes of every sandbox waiting for actions.
        max_batch: Lanes per fused call at most (None: every waiting lane).
    """

    def __init__(self, fn: Callable[[Any], Any], lanes: int = DEFAULT_LANES, *, fuse: bool = False,
                 max_batch: int | None = None) -> None:
        if not callable(fn) and not callable(getattr(fn, "act", None)):
            raise InvalidArgumentError(
                f"batched() takes a callable obs[N, ...] -> actions[N], or an object with act(obs, episodes), got {fn!r}")
        if not is_int(lanes) or lanes < 1:
            raise InvalidArgumentError(f"lanes must be a positive int, got {lanes!r}")
        if not isinstance(fuse, bool):
            raise InvalidArgumentError(f"fuse must be True or False, got {fuse!r}")
        if max_batch is not None and (not fuse or not is_int(max_batch) or max_batch < lanes):
            raise InvalidArgumentError(
                f"max_batch bounds a fused call (fuse=True) and must be an int >= lanes={lanes}, got {max_batch!r}")
        self.fn = fn
        self.lanes = lanes
        self.fuse = fuse
        self.max_batch = max_batch
        self.__doc__ = getattr(fn, "__doc__", None) or type(self).__doc__
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        self.__module__ = getattr(fn, "__module__", None) or __name__

    def __call__(self, obs: Any) -> Any:
        return self.fn(obs)  # a stateful object without __call__ raises TypeError, as it would unwrapped

    def __repr__(self) -> str:
        fused = ", fuse=True" if self.fuse else ""
        return f"batched({self.__qualname__}, lanes={self.lanes}{fused})"


@overload
def batched(fn: Callable[[Any], Any], *, lanes: int = DEFAULT_LANES, fuse: bool = False,
            max_batch: int | None = None) -> BatchedPolicy: ...
@overload
def batched(fn: None = None, *, lanes: int = DEFAULT_LANES, fuse: bool = False,
            max_batch: int | None = None) -> Callable[[Callable[[Any], Any]], BatchedPolicy]: ...


def batched(fn: Callable[[Any], Any] | None = None, *, lanes: int = DEFAULT_LANES, fuse: bool = False,
            max_batch: int | None = None) -> Any:
    """Mark a policy as batched: it maps ``obs[N, ...]`` to ``actions[N]`` for N lanes at once.

    :func:`~rlmesh.evaluate` then runs up to ``lanes`` episodes as the lanes of one vector sandbox
    (one container), each lane reset with its own episode's seed, instead of one episode per
    sandbox. Use it as ``batched(fn)``, ``@batched`` or ``@batched(lanes=64)``.

    With ``fuse=True``, one call serves every sandbox waiting for actions: ``fn`` gets their
    batches joined along the lane axis (up to ``concurrency × lanes``, or ``max_batch``) and each
    sandbox gets its slice of the actions: one forward pass of a GPU-served policy for all
    waiting lanes. Episodes, seeds, results and faults are exactly as without it.

    Args:
        fn: ``obs[N, ...] -> actions[N]``, sync or ``async`` (or an object with
            ``act(obs, episodes)`` and ``reset(episode)``).
        lanes: Episodes per sandbox at once (default 16; fewer when there are fewer episodes).
        fuse: One call for the lanes of every waiting sandbox.
        max_batch: Lanes per fused call at most (default: every waiting lane).

    Returns:
        A :class:`BatchedPolicy` (or, without ``fn``, a decorator making one).

    Raises:
        InvalidArgumentError: ``fn`` is not callable, ``lanes`` is not a positive int, or
            ``max_batch`` is given without ``fuse`` or is below ``lanes``.
    """
    if fn is None:
        return lambda f: BatchedPolicy(f, lanes, fuse=fuse, max_batch=max_batch)
    return BatchedPolicy(fn, lanes, fuse=fuse, max_batch=max_batch)


Policy = Callable[[Any], Any] | BatchedPolicy | str


def policy_name(policy: Any) -> str:
    """A stable name for a policy (``module:qualname``, or ``random``), recorded with the results."""
    if isinstance(policy, str):
        return policy
    fn = policy.fn if isinstance(policy, BatchedPolicy) else policy
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__  # an instance: its class's name
    prefix = f"batched[{policy.lanes}]:" if isinstance(policy, BatchedPolicy) else ""  # fusing changes no result
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
    if not callable(obj) and not callable(getattr(obj, "act", None)):
        raise InvalidArgumentError(f"policy {spec!r} is neither callable nor an object with act(obs, episode)")
    return cast(Policy, obj)


@dataclass(frozen=True)
class Episode:
    """What a stateful policy is told about an episode: ``reset(episode)`` before its first
    action, and ``act(obs, episode)`` at each step.

    Attributes:
        task: The task (a source, or an EnvHub ``hf://owner/repo@rev:suite/task``).
        index: The episode's index in the task (0-based).
        seed: The seed its env was reset with.
        task_description: The env's own description of its task, for a language-conditioned
            policy: the env's ``task_description`` attribute, else its ``task`` attribute (when a
            string), else ``info["task"]`` at reset, else None.
    """

    task: str
    index: int
    seed: int
    task_description: str | None = None


@dataclass
class Acting:
    """How the runner calls a policy: per lane or batched, sync or async, stateful or not."""

    name: str
    batched: bool
    lanes: int
    fn: Callable[..., Any] | None  # None for "random"
    is_async: bool
    reset: Callable[[Episode], Any] | None = None  # a stateful policy's reset(episode)
    with_episode: bool = False  # fn is act(obs, episode)
    fuse: bool = False  # one call for every waiting sandbox
    max_batch: int | None = None

    @property
    def stateful(self) -> bool:
        """Whether the policy is told about its episodes (then their task descriptions are read)."""
        return self.reset is not None or self.with_episode

    def fresh_sampler(self, space: gym.Space[Any], seed: int) -> gym.Space[Any]:
        """A copy of ``space`` seeded with an episode's seed (the ``random`` policy)."""
        sampler = copy.deepcopy(space)
        sampler.seed(seed)
        return sampler


def _adapter(name: str, obj: Any, *, batched: bool, lanes: int) -> Acting:
    """The Acting of a callable, or of an object with ``act`` and/or ``reset``."""
    act = getattr(obj, "act", None)
    reset = getattr(obj, "reset", None)
    if act is not None and not callable(act):
        raise InvalidArgumentError(f"policy {name}: its act attribute must be a method act(obs, episode), got {act!r}")
    if reset is not None and not callable(reset):
        raise InvalidArgumentError(f"policy {name}: its reset attribute must be a method reset(episode), got {reset!r}")
    fn = act if act is not None else obj
    if not callable(fn):
        raise InvalidArgumentError(
            f"policy must be a callable obs -> action, an object with act(obs, episode), batched(fn) or 'random', "
            f"got {obj!r}"
        )
    return Acting(name, batched, lanes, fn, _is_async(fn), reset=reset, with_episode=act is not None)


def resolve_policy(policy: Any) -> Acting:
    """Check ``policy`` and say how to call it.

    Raises:
        InvalidArgumentError: A string other than ``"random"``, or not callable (nor an object
            with ``act``).
    """
    if isinstance(policy, str):
        if policy != "random":
            raise InvalidArgumentError(
                f"unknown policy {policy!r}: give a callable obs -> action, an async callable, batched(fn), "
                "or 'random' (on the command line: --policy MODULE:NAME or --policy random)"
            )
        return Acting("random", False, 1, None, False)
    if isinstance(policy, BatchedPolicy):
        acting = _adapter(policy_name(policy), policy.fn, batched=True, lanes=policy.lanes)
        acting.fuse, acting.max_batch = policy.fuse, policy.max_batch
        return acting
    return _adapter(policy_name(policy), policy, batched=False, lanes=1)


def action_fits(space: gym.Space[Any], action: Any) -> bool:
    """Whether ``action`` has the form of an element of ``space``: ``Space.contains``, except that
    a Box action is judged by its shape and dtype kind only (its bounds are the env's to judge)."""
    try:
        if type(action) is int and type(space) is spaces.Discrete:  # the common case, without NumPy
            return bool(space.start <= action < space.start + space.n)
        if isinstance(space, spaces.Box):
            arr = np.asarray(action)
            return (arr.shape == space.shape and arr.dtype.kind in "biuf"
                    and np.can_cast(arr.dtype, space.dtype, "same_kind"))
        if isinstance(space, spaces.Dict):
            return (isinstance(action, Mapping) and set(action) == set(space.spaces)
                    and all(action_fits(sub, action[key]) for key, sub in space.spaces.items()))
        if isinstance(space, spaces.Tuple):
            return (isinstance(action, Sequence) and not isinstance(action, str) and len(action) == len(space.spaces)
                    and all(action_fits(sub, a) for sub, a in zip(space.spaces, action, strict=True)))
        return bool(space.contains(action))
    except Exception:  # a malformed action can make contains() itself raise
        return False


def check_action(acting: Acting, space: gym.Space[Any], action: Any, where: Callable[[], str]) -> None:
    """Raise unless ``action`` fits ``space`` (see :func:`action_fits`).

    Raises:
        InvalidActionError: It does not, naming the policy, ``where()`` (the episodes) and the space.
    """
    if action_fits(space, action):
        return
    from ..client.actions import describe_action

    raise InvalidActionError(
        f"policy {acting.name} returned {describe_action(action)} in {where()}, which is not an action of the space "
        f"{space}: return {'one action per lane, as a batch of ' if acting.batched else 'an element of '}"
        f"the action space",
        space=str(space),
    )


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004  (an object whose __call__ is a coroutine function, not a test for callable)


async def maybe_await(value: Any) -> Any:
    """``await value`` when it is awaitable (an async policy's result), else ``value``."""
    if inspect.isawaitable(value):
        return await value
    return value

