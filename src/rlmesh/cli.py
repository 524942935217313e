"""The ``rlmesh`` command line.

::

    rlmesh serve SOURCE --address ADDR [...]      serve an env (see rlmesh serve --help)
    rlmesh image bootstrap [--tag T] [--suite S]  build the base image from Debian packages
    rlmesh sandbox ls [--json]                    list sandbox containers
    rlmesh sandbox cleanup [--all]                remove sandboxes whose owner died (or all)
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import orjson

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from .serve import build_parser

    parser = argparse.ArgumentParser(prog="rlmesh", description="Run Gymnasium envs out of process.")
    sub = parser.add_subparsers(dest="command", required=True)
    build_parser(sub.add_parser("serve", help="serve a Gymnasium env"))

    image = sub.add_parser("image", help="sandbox images").add_subparsers(dest="image_command", required=True)
    boot = image.add_parser("bootstrap", help="build the base image from Debian packages (no registry needed)")
    boot.add_argument("--tag", default=None, help="tag for the image (default rlmesh/base:pyX.Y)")
    boot.add_argument("--suite", default=None, help="Debian suite (default: the one matching this Python)")
    boot.add_argument("--mirror", default=None, help="Debian mirror URL (default: this host's apt sources)")
    boot.add_argument("--force", action="store_true", help="rebuild even if the image exists")

    sandbox = sub.add_parser("sandbox", help="sandbox containers").add_subparsers(dest="sandbox_command", required=True)
    ls = sandbox.add_parser("ls", help="list sandbox containers")
    ls.add_argument("--json", action="store_true", help="print JSON")
    clean = sandbox.add_parser("cleanup", help="remove sandboxes whose owner process died")
    clean.add_argument("--all", action="store_true", help="remove every sandbox, live owners included")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rlmesh`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from .serve import run

        return run(args)

    import anyio

    from .errors import RLMeshError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "image":
            from .sandbox.bootstrap import bootstrap_base_image

            tag = anyio.run(lambda: bootstrap_base_image(tag=args.tag, suite=args.suite, mirror=args.mirror, force=args.force))
            print(tag)
            return 0
        from .sandbox.ownership import cleanup_sandboxes, list_sandboxes

        if args.sandbox_command == "ls":
            rows = anyio.run(list_sandboxes)
            if args.json:
                print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
            else:
                print(f"{'CONTAINER':<13} {'STATE':<9} {'OWNER':<10} SOURCE")
                for r in rows:
                    print(f"{r['id']:<13} {r['state']:<9} {r['owner_state']:<10} {r['source']}")
            return 0
        removed = anyio.run(lambda: cleanup_sandboxes(all_owners=args.all))
        print(f"removed {len(removed)} sandbox container(s)")
        return 0
    except RLMeshError as exc:
        print(f"rlmesh: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
