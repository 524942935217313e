"""``rlmesh serve`` / ``python -m rlmesh.serve``: serve a Gymnasium env.

Usage::

    rlmesh serve SOURCE --address ADDR [--num-envs N]
                 [--vectorization-mode sync|async|vector]
                 [--autoreset-mode next_step|same_step|disabled]
                 [--kwargs-json JSON] [--import MODULE ...]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import orjson

__all__ = ["build_parser", "main"]


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add the ``serve`` arguments to ``parser`` (or a new one) and return it."""
    p = parser or argparse.ArgumentParser(prog="rlmesh serve", description="Serve a Gymnasium env.")
    p.add_argument("source", help="Gymnasium id (CartPole-v1, module:Env-v0, gym://id) or module:factory")
    p.add_argument("--address", required=True, help="unix:///abs/path.sock, tcp://host:port or host:port")
    p.add_argument("--num-envs", type=int, default=None, help="serve a vector env with N lanes")
    p.add_argument("--vectorization-mode", default="sync", choices=["sync", "async", "vector"])
    p.add_argument("--autoreset-mode", default="next_step", choices=["next_step", "same_step", "disabled"])
    p.add_argument("--kwargs-json", default="{}", help="JSON object of env constructor kwargs")
    p.add_argument("--selector", default=None, help="suite or suite/task, for envhub: sources")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE before loading (repeatable); a failure names it")
    p.add_argument("--log-level", default="INFO")
    return p


def run(args: argparse.Namespace) -> int:
    """Run the server for parsed arguments; returns the process exit code."""
    from .errors import RLMeshError
    from .server import EnvServer, check_imports, load_env

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        kwargs = orjson.loads(args.kwargs_json)
        if not isinstance(kwargs, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        print(f"rlmesh serve: --kwargs-json must be a JSON object: {exc}", file=sys.stderr)
        return 2
    try:
        check_imports(args.imports)
        env = load_env(
            args.source,
            num_envs=args.num_envs,
            vectorization_mode=args.vectorization_mode,
            autoreset_mode=args.autoreset_mode,
            kwargs=kwargs,
            selector=args.selector,
        )
        EnvServer(env, args.address).serve()
    except RLMeshError as exc:
        print(f"rlmesh serve: {exc}", file=sys.stderr, flush=True)
        return 3
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m rlmesh.serve``."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
