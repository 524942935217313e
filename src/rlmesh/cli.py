"""The ``rlmesh`` command line.

::

    rlmesh serve SOURCE --address ADDR [...]      serve an env (see rlmesh serve --help)
    rlmesh eval SOURCE --policy P --episodes N    score a policy over seeded episodes (see docs/evaluate.md)
    rlmesh image bootstrap [--tag T] [--suite S]  build the base image from Debian packages
    rlmesh image ls [--json]                      list sandbox images (size, packages, last use)
    rlmesh image inspect REF                      one sandbox image's labels and use
    rlmesh image lock IMAGE > requirements.lock    the exact distributions an image installed (packages= takes the file)
    rlmesh image prune [--unused-for AGE] [--other-versions] [--dry-run]
                                                  remove images no container uses
    rlmesh sandbox ls [--json]                    list sandbox containers (and their owners' PIDs)
    rlmesh sandbox cleanup [--all] [--dry-run]    remove sandboxes whose owner died (or all)
    rlmesh --version                              print rlmesh's version
    rlmesh hub tasks SOURCE [--trust-remote-code] [--allow-unpinned-hf] [--cfg JSON] [--json]
                                                  an EnvHub repository's envs (make_env runs in a sandbox)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import orjson

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    from .evaluation.cli import add_eval_parser
    from .server.serve import build_parser

    parser = argparse.ArgumentParser(prog="rlmesh", description="Run Gymnasium envs out of process.")
    parser.add_argument("--version", action="version", version=f"rlmesh {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    build_parser(sub.add_parser("serve", help="serve a Gymnasium env"))
    add_eval_parser(sub)

    image = sub.add_parser("image", help="sandbox images").add_subparsers(dest="image_command", required=True)
    boot = image.add_parser("bootstrap", help="build the base image from Debian packages (no registry needed)")
    boot.add_argument("--tag", default=None, help="tag for the image (default rlmesh/base:pyX.Y)")
    boot.add_argument("--suite", default=None, help="Debian suite (default: the one matching this Python)")
    boot.add_argument("--mirror", default=None, help="Debian mirror URL (default: this host's apt sources)")
    boot.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    debs = image.add_parser("fetch-debs", help="download Debian packages for system_packages into the cache "
                                               "(later builds work with RLMESH_APT_OFFLINE=1)")
    debs.add_argument("packages", nargs="+", metavar="PACKAGE", help="Debian package names, as in system_packages")
    debs.add_argument("--base", default=None, metavar="IMAGE", help="base image (default: the sandboxes' default)")
    img_ls = image.add_parser("ls", help="list sandbox images")
    img_ls.add_argument("--json", action="store_true", help="print JSON")
    img_inspect = image.add_parser("inspect", help="show one sandbox image")
    img_inspect.add_argument("ref", help="tag or id prefix")
    lock = image.add_parser("lock", help="print the exact distributions a sandbox image installed, as a requirements "
                                         "file that packages= accepts")
    lock.add_argument("ref", metavar="IMAGE", help="a sandbox image's tag or id (see `rlmesh image ls`)")
    prune = image.add_parser("prune", help="remove sandbox images no container uses")
    prune.add_argument("--unused-for", default=None, metavar="AGE", help="unused this long (90s, 30m, 12h, 7d)")
    prune.add_argument("--other-versions", action="store_true", help="built by another rlmesh version")
    prune.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")

    sandbox = sub.add_parser("sandbox", help="sandbox containers").add_subparsers(dest="sandbox_command", required=True)
    ls = sandbox.add_parser("ls", help="list sandbox containers")
    ls.add_argument("--json", action="store_true", help="print JSON")
    clean = sandbox.add_parser("cleanup", help="remove sandboxes whose owner process died")
    clean.add_argument("--all", action="store_true", help="remove every sandbox, live owners included")
    clean.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")

    hub = sub.add_parser("hub", help="Hugging Face EnvHub repositories").add_subparsers(dest="hub_command", required=True)
    tasks = hub.add_parser("tasks", help="list every env of an hf:// repository, one source per line "
                                         "(its make_env runs in a sandbox)")
    tasks.add_argument("source", help="hf://owner/repo@SHA[:ENTRY.py][:SUITE]")
    tasks.add_argument("--trust-remote-code", action="store_true", help="required: the repository's code runs (sandboxed)")
    tasks.add_argument("--allow-unpinned-hf", action="store_true", help="allow a revision that is not a full commit SHA")
    tasks.add_argument("--cfg", default=None, metavar="JSON", help="make_env's cfg, a JSON object")
    tasks.add_argument("--json", action="store_true", help="print a JSON list")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rlmesh`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from .server.serve import run

        return run(args)
    if args.command == "eval":
        from .evaluation.cli import run_eval

        # Warnings only: the table, the progress lines and the errors are the output; -v for INFO.
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        return run_eval(args)

    from .errors import RLMeshError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = _housekeeping(args)
        sys.stdout.flush()  # here, where a reader that left (`rlmesh image ls | head`) is handled
        return code
    except RLMeshError as exc:
        print(f"rlmesh: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # and nothing more at exit
        return 141


def _housekeeping(args: argparse.Namespace) -> int:
    import anyio

    if args.command == "image":
        return _image(args)
    if args.command == "hub":
        return _hub_tasks(args)
    from .sandbox.ownership import cleanup_sandboxes, list_sandboxes

    if args.sandbox_command == "ls":
        rows = anyio.run(list_sandboxes)
        if args.json:
            print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        else:
            print(f"{'CONTAINER':<13} {'STATE':<9} {'OWNER':<10} {'PID':>8} SOURCE")
            for r in rows:
                pid = "-" if r["owner_pid"] is None else str(r["owner_pid"])
                print(f"{r['id']:<13} {r['state']:<9} {r['owner_state']:<10} {pid:>8} {r['source']}")
        return 0
    if args.dry_run:
        doomed = anyio.run(lambda: cleanup_sandboxes(all_owners=args.all, dry_run=True))
        by_id = {r["id"]: r for r in anyio.run(list_sandboxes)}
        for cid in doomed:
            row = by_id.get(cid[:12])
            print(f"would remove {cid[:12]}" + (
                f" ({row['source']}, owner PID {row['owner_pid']}, {row['owner_state']})" if row is not None else ""))
        print(f"would remove {len(doomed)} sandbox container(s)")
        return 0
    removed = anyio.run(lambda: cleanup_sandboxes(all_owners=args.all))
    print(f"removed {len(removed)} sandbox container(s)")
    return 0


def _image(args: argparse.Namespace) -> int:
    import time

    import anyio

    from .sandbox import housekeeping

    if args.image_command == "bootstrap":
        from .sandbox.bootstrap import bootstrap_base_image

        tag = anyio.run(lambda: bootstrap_base_image(tag=args.tag, suite=args.suite, mirror=args.mirror, force=args.force))
        print(tag)
        return 0
    if args.image_command == "fetch-debs":
        from .sandbox.debs import prefetch

        print("\n".join(anyio.run(prefetch, args.packages, args.base)) or "nothing to fetch: the base image has them")
        return 0
    if args.image_command == "ls":
        rows = anyio.run(housekeeping.list_images)
        if args.json:
            print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
            return 0
        print(f"{'IMAGE':<36} {'SIZE':>9} {'VERSION':<12} {'LAST USED':<10} {'IN USE':<6} PACKAGES")
        for r in rows:
            age = _age(time.time() - r["last_used"])
            print(f"{(r['tags'] or ['<untagged> ' + r['id']])[0]:<36} {r['size_mb']:>7.0f}MB {r['version']:<12} {age:<10} "
                  f"{'yes' if r['in_use'] else 'no':<6} {' '.join(map(str, r['packages']))[:60]}")
        return 0
    if args.image_command == "inspect":
        row = anyio.run(housekeeping.inspect_image, args.ref)
        row.update({key: _date(row[key]) for key in ("created", "last_used")})
        print(orjson.dumps(row, option=orjson.OPT_INDENT_2).decode())
        return 0
    if args.image_command == "lock":
        row = anyio.run(housekeeping.inspect_image, args.ref)
        if not row["installed"]:
            print(f"rlmesh: the image {args.ref} has no record of what it installed (built by rlmesh "
                  f"{row['version']}): rebuild it with this version", file=sys.stderr)
            return 1
        print(f"# {(row['tags'] or [row['id']])[0]}: what pip installed (rlmesh image lock); "
              "pass this file's path in packages= to build the same")
        print("\n".join(row["installed"]))
        return 0
    unused = housekeeping.parse_age(args.unused_for) if args.unused_for is not None else None
    rows = anyio.run(lambda: housekeeping.prune_images(
        unused_for=unused, other_versions=args.other_versions, dry_run=args.dry_run))
    verb = "would remove" if args.dry_run else "removed"
    for r in rows:
        print(f"{verb} {(r['tags'] or [r['id']])[0]} ({r['size_mb']:.0f} MB, version {r['version']}, "
              f"last used {_age(time.time() - r['last_used'])} ago)")
    print(f"{verb} {len(rows)} image(s), {sum(r['size_mb'] for r in rows):.0f} MB")
    return 0


def _date(epoch: float) -> str:
    """An epoch time as a UTC date, ``2026-12-04 15:40:00 UTC``."""
    import datetime

    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _hub_tasks(args: argparse.Namespace) -> int:
    from .errors import InvalidArgumentError
    from .sandbox.hub_tasks import list_tasks

    options: dict[str, object] = {"trust_remote_code": args.trust_remote_code, "allow_unpinned_hf": args.allow_unpinned_hf}
    if args.cfg is not None:
        try:
            options["cfg"] = orjson.loads(args.cfg)
        except orjson.JSONDecodeError as exc:
            raise InvalidArgumentError(f"--cfg must be a JSON object, e.g. --cfg '{{\"episode_length\": 100}}': {exc}") from exc
    found = list_tasks(args.source, **options)
    print(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode() if args.json else "\n".join(found))
    return 0


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


if __name__ == "__main__":
    sys.exit(main())
