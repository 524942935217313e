"""Load an env from a Hugging Face EnvHub repository checkout (server side).

The repository's ``env.py`` defines ``make_env``, following the LeRobot EnvHub
convention: it is called as ``make_env(n_envs=..., use_async_envs=..., **kwargs)``
with only the arguments its signature accepts, and returns a ``gym.Env``, a
``gym.vector.VectorEnv``, or ``{suite: {task: env}}``. The selector picks the
suite and task (task keys compare as strings); a single entry is picked
automatically.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import concatenate, create_empty_array, iterate

from ..errors import SourceError
from ._types import EnvLike

__all__ = ["SingleLaneEnv", "load_envhub"]



def load_envhub(
    directory: str,
    *,
    suite: str | None,
    task: str | None,
    num_envs: int | None,
    vectorization_mode: str,
    kwargs: Mapping[str, Any],
) -> EnvLike:
    """Call the repository's ``make_env`` and pick the requested env.

    Args:
        directory: The repository checkout (holds ``env.py``).
        suite: The suite to pick, or None.
        task: The task to pick, or None.
        num_envs: None for single-env semantics, else the number of lanes.
        vectorization_mode: ``async`` asks ``make_env`` for async envs.
        kwargs: Extra keyword arguments for ``make_env``.

    Returns:
        A single env (``num_envs`` None) or a vector env.

    Raises:
        SourceError: No ``make_env``, or the selector matches nothing.
    """
    root = Path(directory)
    env_py = root / "env.py"
    if not env_py.is_file():
        raise SourceError(f"the EnvHub repository has no env.py (looked in {root})")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # env.py may import its sibling modules
    spec = importlib.util.spec_from_file_location("rlmesh_envhub_env", env_py)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    make_env = getattr(module, "make_env", None)
    if not callable(make_env):
        raise SourceError(f"{env_py} does not define a callable make_env")

    offered: dict[str, Any] = {"n_envs": num_envs or 1, "use_async_envs": vectorization_mode == "async", **kwargs}
    params = inspect.signature(make_env).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        dropped = sorted(k for k in kwargs if k not in params)
        if dropped:
            raise SourceError(f"make_env in {env_py} does not accept {dropped}; it takes {list(params)}")
        offered = {k: v for k, v in offered.items() if k in params}
    made = _select(make_env(**offered), suite, task)
    if num_envs is None:
        if isinstance(made, gym.vector.VectorEnv):
            if made.num_envs != 1:
                raise SourceError(
                    f"make_env returned a vector env with {made.num_envs} lanes for a single env; "
                    "use SandboxVectorEnv to serve several lanes"
                )
            return SingleLaneEnv(made)
        return made
    if isinstance(made, gym.Env):
        if num_envs != 1:
            raise SourceError(f"make_env returned one gym.Env but {num_envs} lanes were requested")
        return gym.vector.SyncVectorEnv([lambda: made])
    if made.num_envs != num_envs:
        raise SourceError(f"make_env returned {made.num_envs} lanes, {num_envs} were requested")
    return made


def _select(made: Any, suite: str | None, task: str | None) -> EnvLike:
    if isinstance(made, (gym.Env, gym.vector.VectorEnv)):
        if suite is not None or task is not None:
            raise SourceError(f"make_env returned a single env; there is no suite/task to select ({suite}/{task})")
        return made
    if not isinstance(made, Mapping):
        raise SourceError(f"make_env returned {type(made).__name__}; expected an env or {{suite: {{task: env}}}}")
    suites = {str(k): v for k, v in made.items()}
    available = {s: sorted(str(t) for t in tasks) for s, tasks in suites.items() if isinstance(tasks, Mapping)}
    suite = _pick(
        suites, suite,
        choose=f"choose a suite with hf://owner/repo:SUITE/TASK; available: {available}",
        missing=f"suite {suite!r} not found; available: {available}",
    )
    tasks = suites[suite]
    if isinstance(tasks, (gym.Env, gym.vector.VectorEnv)):
        if task is not None:
            raise SourceError(f"suite {suite!r} is a single env; it has no task {task!r}")
        return tasks
    by_name = {str(k): v for k, v in tasks.items()}
    task = _pick(
        by_name, task,
        choose=f"choose a task of suite {suite!r} with :{suite}/TASK; available: {sorted(by_name)}",
        missing=f"task {task!r} not found in suite {suite!r}; available: {sorted(by_name)}",
    )
    env = by_name[task]
    if not isinstance(env, (gym.Env, gym.vector.VectorEnv)):
        raise SourceError(f"{suite}/{task} is {type(env).__name__}, not a gymnasium env")
    return env


def _pick(entries: Mapping[str, Any], key: str | None, *, choose: str, missing: str) -> str:
    # The named entry; with no name, the only one. Anything else is an error listing the choices.
    if key is None:
        if len(entries) != 1:
            raise SourceError(choose)
        return next(iter(entries))
    if key not in entries:
        raise SourceError(missing)
    return key


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
