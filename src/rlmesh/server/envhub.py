"""Load an env from a Hugging Face EnvHub repository checkout (server side).

What LeRobot defines (``lerobot.envs.utils``, ``docs/source/envhub.mdx``), and rlmesh follows:

* The repository's entry file (``env.py`` at its root, or the file the selector names, e.g.
  ``envs/so101_pick_orange.py``) defines ``make_env``.
* ``make_env`` is called as LeRobot calls it: ``make_env(n_envs=..., use_async_envs=...)``, plus
  ``cfg=`` only when one is given. rlmesh passes ``cfg`` (a JSON object) as a :class:`HubConfig`,
  read by attribute as LeRobot's ``EnvConfig`` is, or by item. Other keyword arguments are an
  rlmesh extension: they are passed too, and a ``make_env`` that does not take them is an error.
* It returns ``{suite: {task_id: env}}``, or a bare ``gym.Env`` or ``VectorEnv``, which is read
  as ``{spec.id or "hub_env": {0: env}}``. Task ids compare as LeRobot's (ints) or as strings.

rlmesh then picks one env (the selector's suite and task; with none, the only one) and closes
all the others at once. The entry file is imported under its own module name with its directory
(and the repository root) on ``sys.path`` and ``PYTHONPATH``, so that spawn and forkserver
workers of an ``AsyncVectorEnv`` it builds can import it.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import concatenate, create_empty_array, iterate

from ..errors import SourceError
from ._types import EnvLike
from .envhub_selector import DEFAULT_ENTRY, HubSelector, parse_selector

__all__ = ["HubConfig", "SingleLaneEnv", "close_catalog", "list_catalog", "load_envhub", "make_catalog"]

DEFAULT_SUITE = "hub_env"  # LeRobot's name for the suite of a bare env without a spec id

Catalog = dict[str, Any]
"""``{suite: {task_id: env}}`` (a suite may also be one env, with no tasks)."""


class HubConfig(dict[str, Any]):
    """``cfg`` as ``make_env`` reads it: a JSON object whose fields are attributes, recursively.

    LeRobot passes an ``EnvConfig`` dataclass, read as ``cfg.episode_length``; the keys are
    items too (``cfg["episode_length"]``), and nested objects are ``HubConfig`` as well.

    Args:
        data: The JSON object given as ``cfg={...}``.
    """

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        super().__init__({str(k): _config_value(v) for k, v in (data or {}).items()})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"cfg has no field {name!r} (it has {sorted(self)}): add it to cfg={{...}}"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = _config_value(value)

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None


def _config_value(value: Any) -> Any:
    if isinstance(value, Mapping) and not isinstance(value, HubConfig):
        return HubConfig(value)
    if isinstance(value, list):
        return [_config_value(v) for v in value]
    return value


def load_envhub(
    directory: str,
    *,
    selector: HubSelector | str | None,
    num_envs: int | None,
    vectorization_mode: str,
    kwargs: Mapping[str, Any],
    name: str | None = None,
) -> EnvLike:
    """Call the repository's ``make_env``, pick the requested env and close the others.

    Args:
        directory: The repository checkout.
        selector: ``[ENTRY.py][:SUITE[/TASK]]`` (see :mod:`rlmesh.server.envhub_selector`), or None.
        num_envs: None for single-env semantics, else the number of lanes.
        vectorization_mode: ``async`` asks ``make_env`` for async envs.
        kwargs: ``cfg`` and the other keyword arguments for ``make_env``.
        name: The repository as the user named it (``hf://owner/repo@sha``), for messages.

    Returns:
        A single env (``num_envs`` None) or a vector env.

    Raises:
        SourceError: No entry file or ``make_env``, a bad call, or the selector matches nothing.
    """
    sel = _selector(selector)
    catalog = make_catalog(directory, sel, num_envs=num_envs, vectorization_mode=vectorization_mode, kwargs=kwargs)
    try:
        made = _select(catalog, sel.suite, sel.task, name)
    except BaseException:
        close_catalog(catalog)
        raise
    close_catalog(catalog, keep=made)  # the unselected tasks release their resources now
    if num_envs is None:
        if isinstance(made, gym.vector.VectorEnv):
            if made.num_envs != 1:
                made.close()
                raise SourceError(
                    f"make_env returned a vector env with {made.num_envs} lanes for a single env; "
                    "use SandboxVectorEnv to serve several lanes"
                )
            return SingleLaneEnv(made)
        return made
    if isinstance(made, gym.Env):
        if num_envs != 1:
            made.close()
            raise SourceError(f"make_env returned one gym.Env but {num_envs} lanes were requested")
        return gym.vector.SyncVectorEnv([lambda: made])
    if made.num_envs != num_envs:
        made.close()
        raise SourceError(f"make_env returned {made.num_envs} lanes, {num_envs} were requested")
    return made


def make_catalog(
    directory: str,
    selector: HubSelector | str | None,
    *,
    num_envs: int | None,
    vectorization_mode: str,
    kwargs: Mapping[str, Any],
) -> Catalog:
    """Import the entry file, call ``make_env`` and return what it made as ``{suite: {task: env}}``.

    The caller owns every env in it (see :func:`close_catalog`).

    Raises:
        SourceError: No entry file or ``make_env``, a call ``make_env`` cannot take, or a result
            that is no env and no mapping.
    """
    sel = _selector(selector)
    entry = sel.entry or DEFAULT_ENTRY
    module = import_entry(Path(directory), entry)
    make_env = getattr(module, "make_env", None)
    if not callable(make_env):
        raise SourceError(
            f"{entry} does not define a callable make_env: an EnvHub entry file defines "
            "make_env(n_envs=1, use_async_envs=False[, cfg])"
        )
    made = make_env(**_call_arguments(make_env, entry, num_envs, vectorization_mode, kwargs))
    return normalize(made)


def import_entry(root: Path, entry: str) -> ModuleType:
    """Import the entry file under its own module name, from a path spawned workers see too.

    Its directory and the repository root go first on ``sys.path`` and on ``PYTHONPATH`` (which
    a forkserver or spawned worker reads), so that the module's functions and classes that
    ``AsyncVectorEnv`` pickles by reference can be imported there.

    Raises:
        SourceError: The file is not in the repository, or another module of its name comes first.
    """
    parse_selector(entry)  # the grammar again, inside the sandbox
    root = root.resolve()
    path = root / entry
    if not path.resolve().is_relative_to(root):
        raise SourceError(f"the entry file {entry} resolves outside the repository ({path.resolve()})")
    if not path.is_file():
        found = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if not p.name.startswith("."))[:20]
        hint = (f"name its entry file, e.g. hf://owner/repo@<sha>:{found[0]}; its Python files: {found}"
                if found else "it has no Python file")
        raise SourceError(f"the EnvHub repository has no {entry}: {hint}")
    name = path.stem
    paths = list(dict.fromkeys([str(path.parent), str(root)]))  # once each, the file's own directory first
    for p in reversed(paths):
        if p in sys.path:
            sys.path.remove(p)
        sys.path.insert(0, p)
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in paths]
    os.environ["PYTHONPATH"] = os.pathsep.join([*paths, *inherited])
    importlib.invalidate_caches()
    try:
        module = sys.modules.get(name) or importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise SourceError(
            f"{entry} imports {exc.name!r}, which is not installed in the sandbox: list it in the "
            "repository's requirements.txt or pass packages=[...]"
        ) from exc
    loaded = getattr(module, "__file__", None)
    if loaded is None or Path(loaded).resolve() != path.resolve():
        raise SourceError(
            f"the entry file {entry} would be imported as module {name!r}, but {name!r} is "
            f"{loaded or 'a built-in module'}: rename the entry file"
        )
    return module


def _call_arguments(make_env: Any, entry: str, num_envs: int | None, vectorization_mode: str,
                    kwargs: Mapping[str, Any]) -> dict[str, Any]:
    # LeRobot's call: n_envs and use_async_envs, and cfg only when one is given. Other kwargs are
    # rlmesh's extension; a make_env that does not take one is an error, never a silent drop.
    extra = dict(kwargs)
    cfg = extra.pop("cfg", None)
    offered: dict[str, Any] = {"n_envs": num_envs or 1, "use_async_envs": vectorization_mode == "async"}
    given = dict(extra)
    if cfg is not None:
        if not isinstance(cfg, Mapping):
            raise SourceError(f"cfg must be a JSON object, e.g. cfg={{'episode_length': 100}}, not {type(cfg).__name__}")
        given["cfg"] = _config_value(cfg)
    try:
        params = inspect.signature(make_env).parameters
    except (TypeError, ValueError):  # no signature to read: call it as LeRobot does
        return {**offered, **given}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not takes_any:
        refused = sorted(k for k in given if k not in params)
        if refused:
            raise SourceError(
                f"make_env in {entry} does not accept {refused}; it takes {list(params)}. "
                "Keyword arguments other than cfg are an rlmesh extension: pass only what make_env takes"
            )
        offered = {k: v for k, v in offered.items() if k in params}
    arguments = {**offered, **given}
    required = [n for n, p in params.items() if p.default is inspect.Parameter.empty
                and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
                and n not in arguments]
    if "cfg" in required:
        raise SourceError(
            f"make_env in {entry} requires cfg, and none was given: pass cfg={{...}} (a JSON object, "
            "read as cfg.FIELD), e.g. SandboxEnv(source, cfg={'episode_length': 100}, ...), or on the command "
            "line rlmesh eval SOURCE --cfg '{\"episode_length\": 100}'"
        )
    if required:
        raise SourceError(f"make_env in {entry} requires {required}: pass them as keyword arguments")
    return arguments


def normalize(made: Any) -> Catalog:
    """What ``make_env`` returned, as ``{suite: {task_id: env}}`` (LeRobot's normalization).

    A bare ``gym.Env`` or ``VectorEnv`` is ``{spec.id or "hub_env": {0: env}}``.

    Raises:
        SourceError: It is neither an env nor a mapping.
    """
    if isinstance(made, (gym.Env, gym.vector.VectorEnv)):
        spec = getattr(made, "spec", None)
        return {str(getattr(spec, "id", None) or DEFAULT_SUITE): {0: made}}
    if not isinstance(made, Mapping):
        raise SourceError(
            f"make_env returned {type(made).__name__}; expected a gym.Env, a VectorEnv or {{suite: {{task_id: env}}}}"
        )
    catalog: Catalog = {}
    for key, tasks in made.items():
        if str(key) in catalog:
            close_catalog(dict(made))
            raise SourceError(f"make_env returned two suites named {str(key)!r}")
        catalog[str(key)] = tasks
    return catalog


def list_catalog(catalog: Catalog) -> list[str]:
    """``suite/task`` (or ``suite``, for a suite that is one env) for every env, in order."""
    out: list[str] = []
    for suite, tasks in catalog.items():
        if isinstance(tasks, Mapping):
            out.extend(f"{suite}/{task}" for task in tasks)
        else:
            out.append(suite)
    return out


def close_catalog(catalog: Catalog, keep: Any = None) -> None:
    """Close every env of the catalog but ``keep`` (each object once); a failing close is reported
    on stderr and the others are still closed."""
    seen = {id(keep)} if keep is not None else set()
    for tasks in catalog.values():
        for env in tasks.values() if isinstance(tasks, Mapping) else (tasks,):
            if id(env) in seen or not callable(getattr(env, "close", None)):
                continue
            seen.add(id(env))
            try:
                env.close()
            except Exception as exc:  # one env's failure must not keep the others open
                print(f"rlmesh: closing an unselected EnvHub env failed: {type(exc).__name__}: {exc}",
                      file=sys.stderr, flush=True)


def _selector(selector: HubSelector | str | None) -> HubSelector:
    if isinstance(selector, HubSelector):
        return selector
    return parse_selector(selector) if selector else HubSelector()


def _select(catalog: Catalog, suite: str | None, task: str | None, name: str | None = None) -> EnvLike:
    every = list_catalog(catalog)
    if suite is None:
        if len(every) != 1:
            repo = name or "hf://owner/repo@<sha>"
            shown = every[:20] + ([f"... {len(every) - 20} more (rlmesh.list_tasks lists them all)"] if len(every) > 20 else [])
            raise SourceError(
                f"{name or 'the repository'} has {len(every)} envs: choose one by naming it after the "
                f"repository, {repo}:SUITE/TASK, one of:\n" + "\n".join(
                    f"  {repo}:{e}" if not e.startswith("...") else f"  {e}" for e in shown)
            )
        suite = next(iter(catalog))
    if suite not in catalog:
        raise SourceError(f"suite {suite!r} not found; available: {every}")
    tasks = catalog[suite]
    if isinstance(tasks, (gym.Env, gym.vector.VectorEnv)):
        if task is not None:
            raise SourceError(f"suite {suite!r} is a single env; it has no task {task!r}")
        return tasks
    if not isinstance(tasks, Mapping):
        raise SourceError(f"suite {suite!r} is {type(tasks).__name__}, not {{task_id: env}} or an env")
    names = [str(t) for t in tasks]
    if task is None:
        if len(tasks) != 1:
            raise SourceError(f"choose a task of suite {suite!r} with :{suite}/TASK; available: {names}")
        key = next(iter(tasks))
    else:
        keys = [k for k in tasks if str(k) == task]
        if not keys:
            raise SourceError(f"task {task!r} not found in suite {suite!r}; available: {names}")
        if len(keys) > 1:
            raise SourceError(f"suite {suite!r} has several tasks that read as {task!r}: {keys}")
        key = keys[0]
    env = tasks[key]
    if not isinstance(env, (gym.Env, gym.vector.VectorEnv)):
        raise SourceError(f"{suite}/{task} is {type(env).__name__}, not a gymnasium env")
    return env


class SingleLaneEnv(gym.Env[Any, Any]):
    """Present a one-lane vector env as a single ``gym.Env``.

    Observations, rewards, flags and infos are unbatched; actions are batched.

    Args:
        vec: A vector env with ``num_envs == 1``.
    """

    def __init__(self, vec: gym.vector.VectorEnv[Any, Any, Any]) -> None:
        self.vec = vec
        self.observation_space = vec.single_observation_space
        self.action_space = vec.single_action_space
        self.metadata = {k: v for k, v in vec.metadata.items() if k != "autoreset_mode"}
        self.render_mode = vec.render_mode
        self.spec = vec.spec
        self._action_buf: Any = create_empty_array(self.action_space, 1)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.vec.reset(seed=seed, options=options)
        return next(iter(iterate(self.vec.observation_space, obs))), _unbatch_info(info)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        actions = concatenate(self.action_space, [action], self._action_buf)
        obs, rewards, terminations, truncations, info = self.vec.step(actions)
        return (
            next(iter(iterate(self.vec.observation_space, obs))),
            rewards[0].item() if isinstance(rewards, np.ndarray) else rewards[0],
            bool(terminations[0]),
            bool(truncations[0]),
            _unbatch_info(info),
        )

    def render(self) -> Any:
        frames = self.vec.render()
        return frames[0] if isinstance(frames, (tuple, list)) and frames else frames

    def get_wrapper_attr(self, name: str) -> Any:
        """This env's attribute ``name``, else the lane's (a LeRobot env's ``task_description``)."""
        if hasattr(self, name):
            return getattr(self, name)
        return cast(Any, self.vec).get_attr(name)[0]  # SyncVectorEnv's and AsyncVectorEnv's, not VectorEnv's

    def close(self) -> None:
        self.vec.close()


def _unbatch_info(info: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in info.items():
        if key.startswith("_"):
            continue
        mask = info.get("_" + key)
        if mask is not None and not bool(np.asarray(mask)[0]):
            continue
        if isinstance(value, dict):
            out[key] = _unbatch_info(value)
        elif isinstance(value, np.ndarray) and value.ndim >= 1:
            out[key] = value[0]
        else:
            out[key] = value
    return out
