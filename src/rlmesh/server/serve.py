"""``rlmesh serve`` / ``python -m rlmesh.serve`` (also ``python -m rlmesh.server.serve``): serve a Gymnasium env.

Usage::

    rlmesh serve SOURCE --address ADDR [--num-envs N]
                 [--vectorization-mode sync|async|vector]
                 [--autoreset-mode next_step|same_step|disabled]
                 [--kwargs-json JSON] [--wrappers-json JSON] [--import MODULE ...]
                 [--token-file PATH | --insecure] [--tls-cert PEM --tls-key PEM]
                 [--idle-timeout S] [--max-frame-size BYTES] [--lease S] [--dial]
                 [--handoff PATH] [--max-clients N]

Over TCP a token is required: ``RLMESH_TOKEN`` or ``--token-file``. ``--insecure``
serves without one, on loopback addresses only. Up to ``--max-clients`` clients (default 4)
are served at once, each with its own env made from SOURCE; a dialled server serves its owner.

An env that cannot be made is reported in one line (its exception and rlmesh's hint), exit
status 1; ``--log-level debug`` adds the traceback. With ``--dial`` (a sandbox's server) the
client has heard the cause already, and the traceback stays in the log for its error's ``logs``.
"""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from ..protocol.options import AUTORESET_MODES, VECTORIZATION_MODES
from .options import ServerOptions

__all__ = ["build_parser", "cannot_make_message", "main"]


def _first_made(make: Callable[..., Any]) -> Callable[..., Any]:
    """``make``, called now: the factory returns that env first, then new ones (in another render
    mode when asked: ``render_mode=``)."""
    made = [make()]

    def factory(render_mode: str | None = None) -> Any:
        if made and render_mode is None:
            return made.pop()
        return make(render_mode=render_mode)

    return factory


def _seconds_or_none(text: str) -> float | None:
    if text.lower() in ("none", "0", "off"):
        return None
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds, or none")
    return value


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add the ``serve`` arguments to ``parser`` (or a new one) and return it."""
    p = parser or argparse.ArgumentParser(prog="rlmesh serve", description="Serve a Gymnasium env.")
    p.add_argument("source", help="Gymnasium id (CartPole-v1, module:Env-v0, gym://id) or module:factory")
    p.add_argument("--address", required=True, help="unix:///abs/path.sock, tcp://host:port or host:port")
    p.add_argument("--num-envs", type=int, default=None, help="serve a vector env with N lanes")
    p.add_argument("--vectorization-mode", default="sync", choices=VECTORIZATION_MODES)
    p.add_argument("--autoreset-mode", default="next_step", choices=AUTORESET_MODES)
    p.add_argument("--kwargs-json", default="{}", help="JSON object of env constructor kwargs")
    p.add_argument("--selector", default=None, help="[ENTRY.py][:SUITE[/TASK]], for envhub: sources")
    p.add_argument("--hub-source", default=None, metavar="SOURCE",
                   help="the hf://owner/repo@sha an envhub: source came from, named in its messages")
    p.add_argument("--wrappers-json", default="[]", metavar="JSON",
                   help='wrappers applied in order to each env: [["module:Class", {kwargs}], ...]')
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE[:FUNCTION]",
                   help="import MODULE before loading, and call its FUNCTION if given (a registration hook; repeatable); a failure names it")
    p.add_argument("--token-file", default=None, metavar="PATH",
                   help="file holding the shared token clients must prove (default: RLMESH_TOKEN); TCP needs one")
    p.add_argument("--insecure", action="store_true",
                   help="serve TCP without a token (loopback addresses only)")
    p.add_argument("--require-token", action="store_true",
                   help="require the token (RLMESH_TOKEN or --token-file) on a Unix socket too (behind a relay)")
    p.add_argument("--tls-cert", default=None, metavar="PEM", help="TLS certificate chain (with --tls-key)")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="TLS private key")
    p.add_argument("--idle-timeout", type=_seconds_or_none, default=argparse.SUPPRESS, metavar="SECONDS",
                   help="drop a client silent this long (default 300 over TCP, none on Unix sockets; 'none' disables)")
    p.add_argument("--max-frame-size", type=int, default=None, metavar="BYTES",
                   help="largest frame accepted from a client (default 1 GiB)")
    p.add_argument("--lease", type=float, default=None, metavar="SECONDS",
                   help="exit when no client has been served for SECONDS (from start, or since the last left)")
    p.add_argument("--dial", action="store_true",
                   help="connect to ADDRESS (a Unix socket the client listens on), serve that one connection, "
                        "exit when it ends (how sandboxes run)")
    p.add_argument("--handoff", default=None, metavar="PATH",
                   help="also serve connections handed over as file descriptors on the Unix socket PATH "
                        "(a relay passes its TCP clients on this way)")
    p.add_argument("--max-clients", type=int, default=None, metavar="N",
                   help="clients served at once, each with its own env (default 4; 1 with --dial)")
    p.add_argument("--log-level", default="INFO")
    return p


def run(args: argparse.Namespace) -> int:
    """Run the server for parsed arguments; returns the process exit code."""
    from ..errors import RLMeshError
    from ..protocol import DEFAULT_MAX_FRAME_SIZE
    from ..protocol.auth import load_token
    from . import EnvServer, check_imports, load_env

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        kwargs = orjson.loads(args.kwargs_json)
        if not isinstance(kwargs, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        print(f"rlmesh serve: --kwargs-json must be a JSON object: {exc}", file=sys.stderr)
        return 2
    try:
        wrappers = [(path, dict(kw)) for path, kw in orjson.loads(args.wrappers_json)]
    except (ValueError, TypeError) as exc:
        print(f'rlmesh serve: --wrappers-json must be [["module:Class", {{...}}], ...]: {exc}', file=sys.stderr)
        return 2
    if (args.tls_cert is None) != (args.tls_key is None):
        print("rlmesh serve: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    try:
        token = load_token(token_file=args.token_file) if args.token_file or args.require_token else None
        if args.require_token and token is None:
            print("rlmesh serve: --require-token needs RLMESH_TOKEN or --token-file", file=sys.stderr)
            return 2
        tls = None
        if args.tls_cert:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(args.tls_cert, args.tls_key)
        # Check the address and the token before the env is made (it may take long).
        server_options: dict[str, Any] = {
            "max_frame_size": args.max_frame_size or DEFAULT_MAX_FRAME_SIZE, "token": token,
            "insecure": args.insecure, "tls": tls, "idle_timeout": getattr(args, "idle_timeout", "default"),
            "lease": args.lease, "dial": args.dial, "handoff": args.handoff, "max_clients": args.max_clients,
        }
        ServerOptions.check(args.address, **server_options)

        def make(render_mode: str | None = None) -> Any:
            check_imports(args.imports)
            return load_env(
                args.source,
                num_envs=args.num_envs,
                vectorization_mode=args.vectorization_mode,
                autoreset_mode=args.autoreset_mode,
                kwargs=kwargs if render_mode is None else {**kwargs, "render_mode": render_mode},
                selector=args.selector,
                hub_source=args.hub_source,
                wrappers=wrappers,
            )

        # Dialling, the server connects before it makes the env, so the client hears a failure.
        # Listening, the first env is made before serving (a failure is one line and exit 1);
        # each client beyond the first served at once gets another.
        EnvServer(make if args.dial else _first_made(make), args.address, **server_options).serve()
    except (OSError, ssl.SSLError) as exc:
        print(f"rlmesh serve: {exc}", file=sys.stderr, flush=True)
        return 3
    except RLMeshError as exc:
        print(f"rlmesh serve: {exc}", file=sys.stderr, flush=True)
        return 3
    except Exception as exc:  # the env's own code failed: one line, the traceback at debug level
        if args.dial:
            raise  # a sandbox's server: its owner heard the cause; the traceback goes to its logs
        log = logging.getLogger("rlmesh.serve")
        log.debug("the env %s could not be made", args.source, exc_info=True)
        shown = log.isEnabledFor(logging.DEBUG)
        print(f"rlmesh serve: {cannot_make_message(args.source, exc, traceback_shown=shown)}",
              file=sys.stderr, flush=True)
        return 1
    return 0


def cannot_make_message(source: str, exc: BaseException, *, traceback_shown: bool = False) -> str:
    """One line saying why ``source`` could not be made (and, unless shown, where the traceback is)."""
    text = f"cannot make the env {source}: {type(exc).__name__}: {' '.join(str(exc).split())}"
    return text if traceback_shown else f"{text} (--log-level debug shows the traceback)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``python -m rlmesh.serve``."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
