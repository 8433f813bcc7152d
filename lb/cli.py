"""The `lb` command: serve | backend | demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from .config import load_config, parse_hostport, _Invalid
from .errors import ConfigError

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "config", "lb.yaml")


def _run(coro) -> None:
    try:
        import uvloop
        uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        asyncio.run(coro)


def cmd_serve(args) -> int:
    from .server import serve
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"lb: {exc.message}", file=sys.stderr)
        return 2
    try:
        _run(serve(config))
    except OSError as exc:
        print(f"lb: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def cmd_backend(args) -> int:
    from .backend import serve
    try:
        host, port = parse_hostport(args.listen)
    except _Invalid as exc:
        print(f"lb backend: --listen: {exc}", file=sys.stderr)
        return 2
    _run(serve(host, port, args.name or f"{host}:{port}", args.version, args.warmup))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lb", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy in the foreground")
    serve.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    serve.set_defaults(func=cmd_serve)

    backend = sub.add_parser("backend", help="the demo/test app server")
    backend.add_argument("--listen", required=True, help="HOST:PORT")
    backend.add_argument("--version", required=True)
    backend.add_argument("--name")
    backend.add_argument("--warmup", type=float, default=0.0, help="seconds /health answers 503")
    backend.set_defaults(func=cmd_backend)

    demo = sub.add_parser("demo", help="10 backends + lb + live traffic")
    demo.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    demo.add_argument("--seconds", type=float, default=15.0)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
