"""The `lb` command: serve | ctl | backend | demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from .config import load_config, parse_hostport, _Invalid
from .errors import ConfigError, LbError

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "config", "lb.yaml")


def run_async(coro):
    """Run a coroutine on uvloop; returns its result."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        return asyncio.run(coro)
    return uvloop.run(coro)


def cmd_serve(args) -> int:
    from .server import serve
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"lb: {exc.message}", file=sys.stderr)
        return 2
    try:
        run_async(serve(config, args.config))
    except LbError as exc:
        print(f"lb: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"lb: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def default_socket() -> str:
    """The admin socket of the embedded default config."""
    try:
        config = load_config(DEFAULT_CONFIG)
        return config.resolve(config.admin.socket)
    except ConfigError:
        return "run/lb.sock"


def cmd_ctl(args) -> int:
    import json
    import socket
    path = args.socket or default_socket()
    line = " ".join(args.words) + "\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(None)
            sock.connect(path)
            sock.sendall(line.encode())
            reply_bytes = sock.makefile("rb").readline()
    except OSError as exc:
        print(f"lb ctl: cannot reach lb on admin socket {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if not reply_bytes:
        print(f"lb ctl: lb closed the admin socket {path} without a reply", file=sys.stderr)
        return 2
    reply = json.loads(reply_bytes)
    print(json.dumps(reply, indent=2) if sys.stdout.isatty() else json.dumps(reply))
    return 0 if reply.get("ok") else 1


def cmd_backend(args) -> int:
    from .backend import serve
    try:
        host, port = parse_hostport(args.listen)
    except _Invalid as exc:
        print(f"lb backend: --listen: {exc}", file=sys.stderr)
        return 2
    if not 0.0 <= args.fail_rate <= 1.0:
        print("lb backend: --fail-rate: expected a fraction from 0 to 1", file=sys.stderr)
        return 2
    run_async(serve(host, port, args.name or f"{host}:{port}", args.version, args.warmup,
                    args.fail_rate))
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

    ctl = sub.add_parser("ctl", help="send one admin command and print the reply")
    ctl.add_argument("-s", "--socket", help="admin socket (default: the embedded config's)")
    ctl.add_argument("words", nargs="+", help="the command, e.g. show servers")
    ctl.set_defaults(func=cmd_ctl)

    backend = sub.add_parser("backend", help="the demo/test app server")
    backend.add_argument("--listen", required=True, help="HOST:PORT")
    backend.add_argument("--version", required=True)
    backend.add_argument("--name")
    backend.add_argument("--warmup", type=float, default=0.0, help="seconds /health answers 503")
    backend.add_argument("--fail-rate", type=float, default=0.0,
                         help="fraction of requests (not /health) answered 500")
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
