"""``python -m rlmesh.server.envhub_tasks envhub:DIR [rlmesh serve's options]``: list an EnvHub
repository's envs and exit (runs inside a sandbox, for :func:`rlmesh.list_tasks`).

It takes ``rlmesh serve``'s arguments (and ignores the address: it serves nothing), imports the
entry file, calls ``make_env`` as a start would, closes everything it made, then prints one
line per env, ``rlmesh-envhub-task "SUITE/TASK"`` (a JSON string), and a last line
``rlmesh-envhub-tasks-end COUNT``. A selector's suite limits the list to that suite.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import orjson

from ..errors import RLMeshError, SourceError
from .envhub import close_catalog, list_catalog, make_catalog
from .envhub_selector import HubSelector, parse_selector
from .loader import check_imports
from .serve import build_parser  # serve's own argument list, address included

__all__ = ["END_LINE", "TASK_LINE", "main"]

TASK_LINE = "rlmesh-envhub-task "
END_LINE = "rlmesh-envhub-tasks-end "


def list_envs(directory: str, selector: HubSelector, *, num_envs: int | None, vectorization_mode: str,
              kwargs: dict[str, object]) -> list[str]:
    """``SUITE/TASK`` (or ``SUITE``) of every env ``make_env`` returns, in its order; all are closed.

    Raises:
        SourceError: The repository cannot be loaded, or the selector's suite or task is not there.
    """
    catalog = make_catalog(directory, HubSelector(selector.entry), num_envs=num_envs,
                           vectorization_mode=vectorization_mode, kwargs=kwargs)
    try:
        names = list_catalog(catalog)
    finally:
        close_catalog(catalog)
    if selector.suite is not None:
        wanted = selector.suite if selector.task is None else f"{selector.suite}/{selector.task}"
        picked = [n for n in names if n == wanted or n.startswith(wanted + "/")]
        if not picked:
            raise SourceError(f"{wanted!r} not found; available: {names}")
        names = picked
    return names


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0, or 3 with the cause on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        if not args.source.startswith("envhub:"):
            raise SourceError(f"only envhub: sources list their envs, not {args.source!r}")
        kwargs = orjson.loads(args.kwargs_json)
        if not isinstance(kwargs, dict):
            raise SourceError("--kwargs-json must be a JSON object")
        check_imports(args.imports)
        names = list_envs(
            args.source.removeprefix("envhub:"),
            parse_selector(args.selector) if args.selector else HubSelector(),
            num_envs=args.num_envs, vectorization_mode=args.vectorization_mode, kwargs=kwargs,
        )
    except RLMeshError as exc:
        print(f"rlmesh: {exc}", file=sys.stderr, flush=True)
        return 3
    for name in names:
        print(TASK_LINE + orjson.dumps(name).decode())
    print(f"{END_LINE}{len(names)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
