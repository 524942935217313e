"""``rlmesh eval``: the evaluation harness on the command line.

::

    rlmesh eval SOURCE [SOURCE ...] --policy MODULE:NAME|random --episodes N [--seeds A:B]
                [--concurrency C] [--episode-timeout S] [--results PATH] [--package P ...]
                [--import M ...] [--trust-remote-code] [--cfg JSON] [--success any|last] [--videos DIR] [--plot PATH]
                [--json PATH] [-v] ...

It prints the summary table. It logs warnings only; ``-v`` adds the sandboxes' INFO records. Exit status: 0 when every episode has a record (episodes recorded
as errors included); 2 for a usage error; 1 when the run could not finish; 130 after SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import orjson

__all__ = ["add_eval_parser", "run_eval"]

log = logging.getLogger("rlmesh.evaluation")

USAGE_ERROR = 2
INTERRUPTED = 130


def add_eval_parser(sub: Any) -> None:
    """Add the ``eval`` subcommand to the ``rlmesh`` parser's subparsers."""
    p = sub.add_parser("eval", help="score a policy over seeded episodes in sandboxes (see docs/evaluate.md)")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="sandbox source(s); hf://owner/repo without a selector means every task")
    p.add_argument("--policy", required=True, help="MODULE:NAME (a callable obs -> action, or batched(fn)) or random")
    p.add_argument("--episodes", type=int, default=None, help="episodes per task (default: as many as --seeds)")
    p.add_argument("--seeds", default=None, metavar="A:B", help="seeds A..B-1, one per episode (default 0:EPISODES)")
    p.add_argument("--concurrency", type=int, default=4, help="sandboxes per task at most (default 4)")
    p.add_argument("--episode-timeout", type=float, default=None, metavar="S", help="seconds per episode")
    p.add_argument("--retries", type=int, default=2, help="retries of infrastructure failures (default 2)")
    p.add_argument("--results", default=None, metavar="PATH", help="JSON Lines results file (resumed when it exists)")
    p.add_argument("--package", action="append", default=[], metavar="P", dest="packages",
                   help="pip requirement, wheel or project dir installed in the image (repeatable)")
    p.add_argument("--import", action="append", default=[], metavar="M", dest="imports",
                   help="module checked at build and start (repeatable)")
    p.add_argument("--system-package", action="append", default=[], metavar="DEB", dest="system_packages",
                   help="a Debian package for the image, besides those found for missing libraries (repeatable)")
    p.add_argument("--gl", default=None, choices=("egl", "osmesa"), help="a headless OpenGL preset (MuJoCo rendering)")
    p.add_argument("--trust-remote-code", action="store_true", help="required for hf:// sources")
    p.add_argument("--allow-unpinned-hf", action="store_true", help="allow an hf:// revision that is not a commit SHA")
    p.add_argument("--shards", default=None, help="shards per sandbox (a count or auto; batched policies)")
    p.add_argument("--runtime", default=None, help="container runtime, e.g. runsc")
    p.add_argument("--docker-host", default=None, help="the Docker engine (default DOCKER_HOST)")
    p.add_argument("--env-kwargs", default=None, metavar="JSON", help="env constructor kwargs, a JSON object")
    p.add_argument("--cfg", default=None, metavar="JSON", help="an EnvHub make_env's cfg, a JSON object")
    p.add_argument("--success", default="any", choices=("any", "last"),
                   help="an episode succeeds if any step reports success (default), or its last step")
    p.add_argument("--videos", default=None, metavar="DIR", help="write mp4s of the first episodes of each task here "
                   "(needs rlmesh[video])")
    p.add_argument("--video-episodes", type=int, default=None, metavar="K", help="episodes filmed per task (default 1)")
    p.add_argument("--plot", default=None, metavar="PATH", help="save a return histogram per task (needs matplotlib)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the report (summary and episodes) as JSON")
    p.add_argument("--no-progress", action="store_true", help="no bar and no progress lines")
    p.add_argument("-v", "--verbose", action="store_true", help="log INFO records (sandbox starts, images, ...)")


def _seeds(text: str) -> range:
    start, sep, stop = text.partition(":")
    if not sep or not start.strip().isdigit() or not stop.strip().isdigit() or int(stop) <= int(start):
        raise ValueError(f"--seeds must be A:B with 0 <= A < B (seeds A..B-1), got {text!r}")
    return range(int(start), int(stop))


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.packages:
        options["packages"] = args.packages
    if args.imports:
        options["imports"] = args.imports
    if args.trust_remote_code:
        options["trust_remote_code"] = True
    if args.allow_unpinned_hf:
        options["allow_unpinned_hf"] = True
    if args.shards is not None:
        options["shards"] = args.shards if args.shards == "auto" else int(args.shards)
    if args.system_packages:
        options["system_packages"] = args.system_packages
    for name in ("runtime", "docker_host", "gl"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    kwargs: dict[str, Any] = {}
    if args.env_kwargs is not None:
        kwargs = orjson.loads(args.env_kwargs)
        if not isinstance(kwargs, dict):
            raise ValueError(f"--env-kwargs must be a JSON object, got {args.env_kwargs!r}")
    if args.cfg is not None:
        cfg = orjson.loads(args.cfg)
        if not isinstance(cfg, dict):
            raise ValueError(f"--cfg must be a JSON object, got {args.cfg!r}")
        kwargs = {**kwargs, "cfg": cfg}
    if kwargs:
        options["env_kwargs"] = kwargs
    return options


def run_eval(args: argparse.Namespace) -> int:
    """Run ``rlmesh eval``; returns the exit status."""
    from ..errors import InvalidArgumentError, RLMeshError
    from .api import evaluate
    from .policies import load_policy
    from .report import figure

    try:
        seeds = _seeds(args.seeds) if args.seeds is not None else None
        episodes = args.episodes if args.episodes is not None else (len(seeds) if seeds is not None else None)
        if episodes is None:
            raise ValueError("give --episodes N (or --seeds A:B)")
        options = _options(args)
        if args.plot is not None:
            figure()  # fail now, not after the run
        policy = load_policy(args.policy)
    except (ValueError, orjson.JSONDecodeError) as exc:
        print(f"rlmesh eval: {exc}", file=sys.stderr)
        return USAGE_ERROR
    try:
        report = evaluate(policy, args.sources if len(args.sources) > 1 else args.sources[0], episodes=episodes,
                          seeds=seeds, concurrency=args.concurrency, episode_timeout=args.episode_timeout,
                          results=args.results, retries=args.retries, success=args.success, videos=args.videos,
                          video_episodes=args.video_episodes,
                          progress=False if args.no_progress else None, **options)
    except InvalidArgumentError as exc:
        print(f"rlmesh eval: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except RLMeshError as exc:
        print(f"rlmesh eval: the run could not finish: {exc}", file=sys.stderr)
        if args.results:
            print(f"rlmesh eval: finished episodes are in {args.results}; run the same command again to resume",
                  file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        where = f"; finished episodes are in {args.results}, run the same command again to resume" if args.results else ""
        print(f"rlmesh eval: interrupted{where}", file=sys.stderr)
        return INTERRUPTED
    print(report.table())
    failed = [r for r in report.episodes if r["error"] is not None]
    if failed:
        first, error = failed[0], failed[0]["error"]
        code = f", exit code {error['exit_code']}" if error["exit_code"] is not None else ""
        where = args.results or args.json
        print(f"{len(failed)} episode(s) recorded as errors; the first: episode {first['episode']} of {first['task']}: "
              f"{error['type']}: {error['message']}{code}" + (f" (every record is in {where})" if where else ""))
    if args.json is not None:
        with open(args.json, "w") as f:
            f.write(report.to_json())
    if args.plot is not None:
        report.plot(args.plot)
        print(f"plot saved to {args.plot}")
    return 0
