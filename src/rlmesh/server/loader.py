"""Turn a source string into a Gymnasium env (server side; runs inside sandboxes).

Sources:

* a Gymnasium id (``CartPole-v1``), including the ``module:EnvName-v0`` form, whose
  module is imported first, and the explicit ``gym://CartPole-v1`` form;
* a ``module:callable`` factory, called with the make kwargs;
* ``envhub:/abs/dir``, a Hugging Face EnvHub checkout baked into a sandbox image
  (see :mod:`rlmesh.server.envhub`), with ``selector`` naming ``[ENTRY.py][:SUITE[/TASK]]``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import gymnasium as gym
from gymnasium.vector import AutoresetMode

from .._checks import check_num_envs
from .._imports import import_attribute
from ..errors import InvalidArgumentError, SourceError
from ..protocol.options import FACTORY_PATTERN, is_gym_id, parse_autoreset_mode, parse_vectorization_mode
from ._types import EnvLike

__all__ = ["check_imports", "load_env"]


def check_imports(modules: Sequence[str]) -> None:
    """Import each module, so that a missing dependency fails early and by name; an entry
    ``module:function`` (a registration hook) imports the module and calls the function.

    Raises:
        SourceError: A module cannot be imported (the message names the module that is missing,
            which may be a dependency of the one imported), or its hook failed.
    """
    for entry in modules:
        name, _, hook = entry.partition(":")
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            # A module not found may be a dependency of the one imported: name the one missing.
            missing = repr(exc.name or name) if isinstance(exc, ModuleNotFoundError) else "it"
            raise SourceError(
                f"required import {entry!r} failed: {type(exc).__name__}: {exc}. "
                f"Add the package that provides {missing} to `packages`."
            ) from exc
        if hook:
            function = getattr(module, hook, None)
            if not callable(function):
                raise SourceError(f"imports: {entry!r}: the module {name!r} has no function {hook!r}")
            try:
                function()
            except Exception as exc:
                raise SourceError(f"imports: {entry!r}: the hook {hook}() raised {type(exc).__name__}: {exc}") from exc


def load_env(
    source: str,
    *,
    num_envs: int | None = None,
    vectorization_mode: str = "sync",
    autoreset_mode: str | AutoresetMode = "next_step",
    kwargs: Mapping[str, Any] | None = None,
    selector: str | None = None,
    wrappers: Sequence[tuple[str, Mapping[str, Any]]] = (),
    hub_source: str | None = None,
) -> EnvLike:
    """Create the env that a server will serve.

    Args:
        source: A Gymnasium id or a ``module:callable`` factory.
        num_envs: None for a single env; an int for a vector env with that many lanes.
        vectorization_mode: ``sync``, ``async`` or ``vector`` (the env's own
            vector entry point), as in ``gymnasium.make_vec``.
        autoreset_mode: ``next_step``, ``same_step`` or ``disabled``.
        kwargs: Keyword arguments for the env's constructor.
        selector: ``[ENTRY.py][:SUITE[/TASK]]`` for ``envhub:`` sources (the entry file and the env).
        wrappers: ``(module:Class, kwargs)`` pairs, applied in order to each env (each lane of a
            vector env) before anything is described to clients.
        hub_source: The ``hf://owner/repo@sha`` an ``envhub:`` source came from, named in its
            messages (a repository of several envs lists them as sources to copy).

    Returns:
        A ``gymnasium.Env`` or ``gymnasium.vector.VectorEnv``.

    Raises:
        SourceError: The source is malformed or cannot be loaded.
        InvalidArgumentError: An option is out of range.
    """
    kwargs = dict(kwargs or {})
    check_num_envs(num_envs, optional=True)
    vectorization_mode = parse_vectorization_mode(vectorization_mode)
    mode = parse_autoreset_mode(autoreset_mode)

    wrap = _wrapping(wrappers)
    if wrappers and num_envs is not None and vectorization_mode == "vector":
        raise InvalidArgumentError("wrappers apply to single envs: use vectorization_mode 'sync' or 'async'")
    if source.startswith("envhub:"):
        from .envhub import load_envhub  # imported only for envhub: sources

        hub_env = _check_mode(load_envhub(
            source.removeprefix("envhub:"), selector=selector,
            num_envs=num_envs, vectorization_mode=vectorization_mode, kwargs=kwargs, name=hub_source,
        ), mode, source)
        if wrappers and num_envs is not None:
            raise InvalidArgumentError("wrappers apply to single envs from an EnvHub repository")
        return hub_env if not wrappers else wrap(hub_env)
    if selector is not None:
        raise InvalidArgumentError("a selector applies to envhub: sources only")
    if is_gym_id(source):
        env_id = source.removeprefix("gym://")
        _check_namespace(env_id)
        if num_envs is None:
            single: EnvLike = wrap(gym.make(env_id, **kwargs))
            return single
        if vectorization_mode == "vector":
            # The env's own vector implementation (Gymnasium's vector_entry_point) has its own
            # autoreset mode; a different requested one is an error, never silently ignored.
            env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
            return _check_mode(env, mode, source)
        return gym.make_vec(
            env_id,
            num_envs=num_envs,
            vectorization_mode=vectorization_mode,
            vector_kwargs={"autoreset_mode": mode},
            wrappers=[wrap] if wrappers else None,
            **kwargs,
        )
    factory = _import_factory(source.removeprefix("py://"))
    if num_envs is None:
        made: EnvLike = wrap(_check_env(factory(**kwargs), source))
        return made
    if vectorization_mode == "vector":
        return _check_mode(_check_env(factory(num_envs=num_envs, **kwargs), source), mode, source)

    def make_one() -> gym.Env[Any, Any]:
        env = factory(**kwargs)
        if not isinstance(env, gym.Env):
            raise SourceError(f"factory {source!r} returned {type(env).__name__}, not a gymnasium.Env")
        wrapped: gym.Env[Any, Any] = wrap(env)
        return wrapped

    vec_cls = gym.vector.SyncVectorEnv if vectorization_mode == "sync" else gym.vector.AsyncVectorEnv
    return vec_cls([make_one] * num_envs, autoreset_mode=mode)


# Namespaces whose package name does not say so.
_KNOWN_NAMESPACES = {"ALE": ("ale-py", "ale_py")}


def _check_namespace(env_id: str) -> None:
    """Make sure a ``Namespace/Name-vN`` id's namespace is registered, or fail saying what to import.

    Gymnasium only says "Namespace X not found". Packages register their namespace when they are
    imported (``import ale_py`` registers ``ALE``) or through a ``gymnasium.envs`` entry point,
    which Gymnasium 1.x no longer loads by itself: one named after the namespace is loaded here
    (else every one, as Gymnasium 0.26 to 0.29 did). An id with a ``module:`` prefix imports its
    module first, so it is left to ``gym.make``.

    Raises:
        gymnasium.error.NamespaceNotFound: With rlmesh's hint.
        SourceError: The namespace's own entry point failed.
    """
    if ":" in env_id:
        return
    namespace = gym.envs.registration.parse_env_id(env_id)[0]
    if namespace is None or _registered(namespace):
        return
    loaded = load_entry_points(namespace)  # those named after it (else all, which are not named below)
    if _registered(namespace):
        return
    module = namespace_module(namespace)
    if loaded:
        hint = (f"the gymnasium.envs entry point{'s' if len(loaded) > 1 else ''} {', '.join(loaded)} "
                f"{'were' if len(loaded) > 1 else 'was'} loaded but did not register it")
    elif module is not None:
        hint = (f"the module {module!r} registers it when imported: pass imports=[{module!r}] "
                f"(`--import {module}` to rlmesh serve), or write the id as '{module.partition(':')[0]}:{env_id}'")
    else:
        hint = (f"no installed package registers it: add the package that registers namespace {namespace} "
                "to packages= and its module to imports=")
        if namespace in _KNOWN_NAMESPACES:
            dist, mod = _KNOWN_NAMESPACES[namespace]
            hint += f" (packages=[{dist!r}], imports=[{mod!r}])"
    raise gym.error.NamespaceNotFound(f"Namespace {namespace} not found; {hint}")


def _registered(namespace: str) -> bool:
    return any(spec.namespace == namespace for spec in gym.registry.values())


def load_entry_points(namespace: str) -> list[str]:
    """Load the ``gymnasium.envs`` entry points for ``namespace`` (those named after it, else all of
    them); returns those named after it as ``name = module:function``. An entry point named after the namespace that
    fails raises; others that fail are skipped, as Gymnasium did.

    Raises:
        SourceError: The namespace's own entry point failed.
    """
    points = list(importlib.metadata.entry_points(group="gymnasium.envs"))
    named = [ep for ep in points if ep.name.lower() == namespace.lower()]
    loaded = []
    for ep in named or points:  # all of them when none is named after it, as Gymnasium did
        try:
            target = ep.load()
            if ep.attr:
                target()
        except Exception as exc:
            if named:
                raise SourceError(f"the gymnasium.envs entry point {ep.name} = {ep.value} that registers namespace "
                                  f"{namespace} failed: {type(exc).__name__}: {exc}") from exc
            continue
        loaded.append(f"{ep.name} = {ep.value}")
    return loaded if named else []


def namespace_module(namespace: str) -> str | None:
    """The importable module that registers the Gymnasium ``namespace``, if one is found.

    Looks at ``gymnasium.envs`` entry points named after it, the well-known ones (``ALE`` is
    ``ale_py``), then top-level modules named after it (``minigrid``, ``x_py``, ``gym_x``...).
    """
    for ep in importlib.metadata.entry_points(group="gymnasium.envs"):
        if ep.name.lower() == namespace.lower():
            return ep.value.replace(" ", "")  # module:function, as imports= takes it
    low = namespace.lower().replace("-", "_")
    candidates = [_KNOWN_NAMESPACES[namespace][1]] if namespace in _KNOWN_NAMESPACES else []
    candidates += [low, f"{low}_py", f"{low}_gym", f"gym_{low}", f"{low}_envs"]
    for name in candidates:
        if name.isidentifier() and importlib.util.find_spec(name) is not None:
            return name
    return None


def _wrapping(wrappers: Sequence[tuple[str, Mapping[str, Any]]]) -> Callable[[EnvLike], Any]:
    """A function applying ``wrappers`` in order (the classes are imported now, so a bad one fails early)."""
    classes = []
    for path, wrapper_kwargs in wrappers:
        cls = _import_factory(path)
        if not (isinstance(cls, type) and issubclass(cls, gym.Wrapper)):
            raise SourceError(f"wrapper {path!r} is not a gymnasium.Wrapper subclass")
        classes.append((cls, dict(wrapper_kwargs)))

    def wrap(env: Any) -> Any:
        if classes and not isinstance(env, gym.Env):
            raise SourceError("wrappers apply to single envs; this source makes a vector env")
        for cls, wrapper_kwargs in classes:
            env = cls(env, **wrapper_kwargs)
        return env

    return wrap


def _import_factory(source: str) -> Callable[..., Any]:
    if not FACTORY_PATTERN.match(source):
        raise SourceError(
            f"cannot read the env source {source!r}: use a Gymnasium id such as 'CartPole-v1' "
            "or 'my_module:MyEnv-v0', or a factory 'my_module:make_env'"
        )
    module_name, attr = source.split(":", 1)
    try:
        obj = import_attribute(module_name, attr)
    except ImportError as exc:
        raise SourceError(f"cannot import module {module_name!r} for source {source!r}: {exc}") from exc
    except AttributeError as exc:
        raise SourceError(f"module {module_name!r} has no attribute {attr!r}") from exc
    if not callable(obj):
        raise SourceError(f"{source!r} is not callable")
    return cast(Callable[..., Any], obj)


def _check_mode(env: EnvLike, mode: AutoresetMode, source: str) -> EnvLike:
    # A vector env made by the source's own code has its own autoreset mode; a different
    # requested one cannot be applied, and must not be silently ignored.
    if isinstance(env, gym.vector.VectorEnv):
        served = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if served != mode:
            env.close()
            raise SourceError(
                f"{source} makes its own vector env, whose autoreset mode is {getattr(served, 'name', served)}, "
                f"not the requested {mode.name}; request {getattr(served, 'name', served)} or change the env"
            )
    return env


def _check_env(env: Any, source: str) -> EnvLike:
    if isinstance(env, (gym.Env, gym.vector.VectorEnv)):
        return env
    raise SourceError(
        f"factory {source!r} returned {type(env).__name__}, not a gymnasium.Env or VectorEnv"
    )
