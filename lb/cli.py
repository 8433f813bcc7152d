"""The `lb` command: serve | check | ctl | deploy | demo | backend. Argument parsing; each
command's work is in its own module."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .core.errors import ConfigError, InvalidValue, LbError
from .core.values import parse_hostport
from .files import load_config
from .loop import run_async


def cmd_serve(args) -> int:
    from .serve import failure_message, serve
    # Absolute before anything uses it: a reload re-reads it, and the new master of an upgrade
    # (started in /) reads it too.
    config_path = os.path.abspath(args.config) if args.config else None
    pidfile = os.path.abspath(args.pidfile) if args.pidfile else None
    try:
        config = load_config(config_path, args.runtime_dir)
    except ConfigError as exc:
        print(f"lb: {exc.message}", file=sys.stderr)
        return 2
    try:
        run_async(serve(config, config_path, args.upgrade_fd, pidfile))
    except (LbError, OSError, RuntimeError) as exc:
        print(f"lb: {failure_message(exc)}", file=sys.stderr)
        return 1 if isinstance(exc, RuntimeError) else 2
    return 0


def default_socket(config_path: str | None = None) -> str:
    """The admin socket a config names (relative to its folder); for the embedded default
    config, ./run/lb.sock. Raises ConfigError."""
    config = load_config(config_path)
    return config.resolve(config.admin.socket)


def cmd_check(args) -> int:
    import time
    from . import privileges, tls
    try:
        config = load_config(args.config)
        privileges.lookup(config)                           # user: and group: exist
        certs, warnings = tls.check(config, time.time())    # loads every certificate and key, as nginx -t
    except ConfigError as exc:
        print(f"lb: {exc.message}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"lb: warning: {warning}", file=sys.stderr)
    served = sum(len(infos) for infos in certs.values())
    print(f"{config.source}: ok, {len(config.backends)} backends" + (f", {served} certificates" if served else ""))
    return check_live(config, args.live)


def check_live(config, required: bool) -> int:
    """The config's versions against the lb running on its admin socket (when one answers;
    with --live one must, and a difference exits 1)."""
    from .deploy.configsync import live_differences
    try:
        stale = live_differences(config)
    except (OSError, EOFError, LbError) as exc:
        if not required:
            return 0
        print(f"lb check: --live: no answer from lb on {config.resolve(config.admin.socket)}: "
              f"{getattr(exc, 'message', None) or getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    for item in stale:
        print(f"lb check: {'' if required else 'warning: '}{item.describe()}", file=sys.stderr)
    if not stale:
        print(f"{config.source}: the running lb agrees with its versions")
    return 1 if stale and required else 0


def cmd_ctl(args) -> int:
    from .deploy.client import request
    from .deploy.ctlview import render
    try:
        targets = [*(args.socket or []), *(default_socket(path) for path in args.config or [])] \
            or [default_socket()]
    except ConfigError as exc:
        print(f"lb ctl: {exc.message}", file=sys.stderr)
        return 2
    if args.stdio:
        if len(targets) != 1 or targets[0].startswith("ssh://") or args.words:
            print("lb ctl: --stdio takes one local -s SOCKET and reads the commands from stdin", file=sys.stderr)
            return 2
        return relay_stdio(targets[0])
    if not args.words:
        print("lb ctl: a command is required, e.g. lb ctl show servers", file=sys.stderr)
        return 2
    if len(targets) > 1 or targets[0].startswith("ssh://"):
        return ctl_fleet(targets, args.words, args.ssh_command)
    path = targets[0]
    try:
        reply = request(path, " ".join(args.words), timeout_s=None)
    except OSError as exc:
        print(f"lb ctl: cannot reach lb on admin socket {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except EOFError:
        print(f"lb ctl: lb closed the admin socket {path} without a reply", file=sys.stderr)
        return 2
    print(render(args.words, reply) if sys.stdout.isatty() else json.dumps(reply))
    return 0 if reply.get("ok") else 1


def relay_stdio(path: str) -> int:
    """`lb ctl --stdio`: each line of stdin to the socket, each reply a line on stdout, until
    EOF; what `lb deploy` and `lb ctl` run over ssh. An lb that cannot be reached is a reply
    with "unreachable" (the far side retries), not the end of the relay."""
    from .deploy.client import request
    for raw in sys.stdin.buffer:
        line = raw.decode("utf-8", "replace").strip()
        if not line:
            continue
        try:
            reply = request(path, line, timeout_s=None)
        except (OSError, EOFError, ValueError) as exc:
            reply = {"ok": False, "unreachable": True,
                     "error": f"cannot reach lb on admin socket {path}: {getattr(exc, 'strerror', None) or exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


def ctl_fleet(targets: list[str], words: list[str], ssh_command: str) -> int:
    """One command to every target: one reply per lb, labelled; exit 1 if any failed or did
    not answer, 2 on a bad target."""
    from .core.errors import DeployError
    from .deploy.ctlview import render
    from .deploy.fleet import Fleet
    line = " ".join(words)

    async def ask() -> dict:
        fleet = Fleet(targets, ssh_command, reconnect_s=1.0)
        fleet.tolerate_lost = True
        try:
            try:
                replies = await fleet.call(line, timeout_s=None)
            except DeployError:
                replies = {}
            return {label: replies.get(label) or {"ok": False, "error": fleet.lost.get(label, "no reply")}
                    for label in fleet.labels}
        finally:
            await fleet.close()

    try:
        replies = run_async(ask())
    except DeployError as exc:
        print(f"lb ctl: {exc.message}", file=sys.stderr)
        return 2
    for label, reply in replies.items():
        if sys.stdout.isatty():
            print(f"== {label}\n{render(words, reply)}")
        else:
            print(json.dumps({"lb": label, "reply": reply}))
    return 0 if all(reply.get("ok") for reply in replies.values()) else 1


def cmd_backend(args) -> int:
    try:
        from .demo.backend import serve, start_detached, stop_pidfile
        from .demo.spa import Site
    except ImportError as exc:     # wsproto comes with the demo extra
        print(f"lb backend: {exc}; install the demo extra: pip install 'lb[demo]'", file=sys.stderr)
        return 2
    try:
        host, port = parse_hostport(args.listen)
    except InvalidValue as exc:
        print(f"lb backend: --listen: {exc}", file=sys.stderr)
        return 2
    if (error := backend_args_error(args)) is not None:
        print(f"lb backend: {error}", file=sys.stderr)
        return 2
    if args.replace:
        stop_pidfile(args.pidfile)
    if args.detach:
        try:
            pid = start_detached(backend_argv(args), args.pidfile, args.log)
        except RuntimeError as exc:
            print(f"lb backend: {exc}", file=sys.stderr)
            return 1
        print(json.dumps({"backend": args.name, "version": args.version, "pid": pid}))
        return 0
    name = args.name or f"{host}:{port}"
    site = Site(args.version, name, args.chunks, args.asset_bytes) if args.spa else None
    run_async(serve(host, port, name, args.version, args.warmup, args.fail_rate, args.pidfile, site,
                    args.grace))
    return 0


def backend_args_error(args) -> str | None:
    """What is wrong with `lb backend`'s arguments (--listen apart), or None."""
    if not 0.0 <= args.fail_rate <= 1.0:
        return "--fail-rate: expected a fraction from 0 to 1"
    if not 0.0 <= args.grace <= 3600:
        return "--grace: expected seconds from 0 to 3600"
    if args.chunks < 0 or args.asset_bytes < 0:
        return "--chunks and --asset-bytes: expected a count from 0 up"
    if (args.replace or args.detach) and not args.pidfile:
        return "--replace and --detach need --pidfile"
    return None


def backend_argv(args) -> list[str]:
    """The arguments a --detach'ed `lb backend` serves with."""
    spa = ["--spa", "--chunks", str(args.chunks), "--asset-bytes", str(args.asset_bytes)] if args.spa else []
    return ["--listen", args.listen, "--version", args.version, "--warmup", str(args.warmup),
            "--fail-rate", str(args.fail_rate), "--grace", str(args.grace),
            *(["--name", args.name] if args.name else []), *spa]


def cmd_deploy(args) -> int:
    from .core.errors import DeployError
    from .deploy.plan import EXIT_USAGE, Options, parse_seconds
    from .deploy.run import deploy_command
    from .deploy.view import JsonView, TtyView
    view = TtyView() if sys.stdout.isatty() else JsonView()
    opts = None
    try:
        if not args.resume:
            missing = [flag for flag, value in (("--to", args.to), ("--update", args.update)) if not value]
            if missing:
                raise DeployError(f"{' and '.join(missing)} required (or --resume)")
            bake_s = parse_seconds(args.bake or "10s", "--bake")
            canary_bake_s = parse_seconds(args.canary_bake, "--canary-bake") if args.canary_bake else 3 * bake_s
            opts = Options(
                to=args.to, update=args.update, rollback=args.rollback, batch=args.batch, canary=args.canary,
                bake_s=bake_s, canary_bake_s=canary_bake_s, max_error_rate=args.max_error_rate,
                max_p99_ratio=args.max_p99_ratio,
                health_timeout_s=parse_seconds(args.health_timeout, "--health-timeout"),
                drain_timeout_s=parse_seconds(args.drain_timeout, "--drain-timeout"),
                update_timeout_s=parse_seconds(args.update_timeout, "--update-timeout"),
                min_ready=args.min_ready, rollback_done=not args.no_rollback_done, **gate_options(args))
    except DeployError as exc:
        view.error(exc.message)
        return EXIT_USAGE
    log_path = args.log or (args.state[:-len(".state")] if args.state.endswith(".state") else args.state) + ".log"
    try:
        lb_timeout_s = parse_seconds(args.lb_timeout, "--lb-timeout")
    except DeployError as exc:
        view.error(exc.message)
        return EXIT_USAGE
    targets = [] if args.cluster else args.socket or [default_socket()]
    try:
        etcd_tls = etcd_options(args)
    except LbError as exc:
        view.error(exc.message)
        return EXIT_USAGE
    return run_async(deploy_command(opts, targets, args.state, log_path, view,
                                    args.resume, args.dry_run, expect_to=args.to, ssh_command=args.ssh_command,
                                    lb_timeout_s=lb_timeout_s, write_config=args.write_config,
                                    cluster=args.cluster, etcd_tls=etcd_tls))


def etcd_options(args):
    """--etcd-ca/--etcd-cert/--etcd-key as a TLS context for etcd, None without them. Raises
    LbError (ConfigError) naming the option."""
    if args.etcd_ca is None and args.etcd_cert is None and args.etcd_key is None:
        return None
    from .core.errors import DeployError
    from .tls import etcd_client_context
    if args.cluster is None:
        raise DeployError("--etcd-ca, --etcd-cert and --etcd-key go with --cluster")
    return etcd_client_context(args.etcd_ca, args.etcd_cert, args.etcd_key, "--etcd", "--etcd-{name}")


def gate_options(args) -> dict:
    """`lb deploy`'s gate flags as Options fields. Raises DeployError naming a bad one."""
    from .deploy.plan import parse_seconds
    return {"verify": args.verify, "verify_timeout_s": parse_seconds(args.verify_timeout, "--verify-timeout"),
            "checks": tuple(args.check or ()),
            "check_interval_s": parse_seconds(args.check_interval, "--check-interval"),
            "check_timeout_s": parse_seconds(args.check_timeout, "--check-timeout"),
            "prometheus": args.prometheus, "gates": tuple(args.gate or ()), "gate_tries": args.gate_tries,
            "min_requests": args.min_requests,
            "bake_max_s": parse_seconds(args.bake_max, "--bake-max") if args.bake_max else None,
            "allow_thin_bakes": args.allow_thin_bakes, "lb_url": args.lb_url, "version_header": args.version_header}


def cmd_demo(args) -> int:
    from .demo.demo import run_demo
    return run_demo(args)


TARGET_HELP = ("admin socket path or ssh://[user@]host[:port]/path/to/lb.sock, may be given several times "
               "(default: the embedded config's socket)")


class VersionAction(argparse.Action):
    """`lb --version`: prints lb's version and exits 0. The package metadata is read only
    then (~10 ms), not by every `lb ctl` a script runs."""

    def __init__(self, option_strings, dest, **_):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print lb's version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        import lb
        print(f"lb {lb.__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lb", description=__doc__)
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy in the foreground")
    serve.add_argument("-c", "--config", help="config file (default: the embedded one, "
                       "with its admin socket and state file in ./run/)")
    serve.add_argument("--pidfile", metavar="FILE", help="write the master's pid here once it serves; a new "
                       "master rewrites it at an upgrade, a clean stop removes it")
    serve.add_argument("--upgrade-fd", type=int, help=argparse.SUPPRESS)   # a new master's handoff channel
    serve.add_argument("--runtime-dir", help=argparse.SUPPRESS)   # the old master's, for the embedded config
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate a config: exit 0, or 2 naming the key path")
    check.add_argument("-c", "--config", help="config file (default: the embedded one)")
    check.add_argument("--live", action="store_true", help="also ask the lb on the config's admin socket, "
                       "and exit 1 when a node's version differs from the config's (2 when none answers)")
    check.set_defaults(func=cmd_check)

    ctl = sub.add_parser("ctl", help="send one admin command to one or more lbs and print the replies")
    ctl.add_argument("-s", "--socket", action="append", metavar="TARGET", help=TARGET_HELP)
    ctl.add_argument("-c", "--config", action="append", metavar="FILE",
                     help="the lb serving this config file: its admin socket; may be given several times")
    ctl.add_argument("--stdio", action="store_true", help="relay command lines from stdin to -s SOCKET, "
                     "a reply a line (what lb runs over ssh)")
    ctl.add_argument("--ssh-command", default="ssh", help="run instead of ssh for ssh:// targets")
    ctl.add_argument("words", nargs="*", help="the command, e.g. show servers")
    ctl.set_defaults(func=cmd_ctl)

    deploy = sub.add_parser("deploy", help="rolling deploy through a running lb's admin socket",
                            description="Drain, update, check and put back the nodes not yet on "
                            "--to, a canary first, then --batch at a time; roll back on trouble. "
                            "Exit 0 done, 1 failed and rolled back, 2 bad arguments or lb "
                            "unreachable, 3 failed and not fully rolled back, 130 interrupted.")
    fleet = deploy.add_mutually_exclusive_group()
    fleet.add_argument("-s", "--socket", action="append", metavar="TARGET",
                       help=TARGET_HELP + "; every step goes to every lb")
    fleet.add_argument("--cluster", metavar="etcd://HOST:PORT[,HOST:PORT...]/NAME",
                       help="the lbs of cluster NAME as etcd lists them (cluster mode): a change goes to one, "
                       "which shares it through etcd; reads go to every member")
    deploy.add_argument("--ssh-command", default="ssh", help="run instead of ssh for ssh:// targets")
    deploy.add_argument("--etcd-ca", metavar="FILE", help="with --cluster: TLS to etcd, its certificate checked "
                        "against these CAs (with --etcd-cert alone: the system's)")
    deploy.add_argument("--etcd-cert", metavar="FILE", help="with --cluster: a client certificate for etcd")
    deploy.add_argument("--etcd-key", metavar="FILE", help="with --cluster: the client certificate's key")
    deploy.add_argument("--lb-timeout", default="30s", help="how long an lb may not answer (a restart) before "
                        "the step fails (default 30s)")
    deploy.add_argument("--to", help="the version to roll to")
    deploy.add_argument("--update", help="shell command that puts the new code on a node; "
                        "placeholders {name} {host} {port} {version} {old_version}, also in env "
                        "LB_NODE LB_HOST LB_PORT LB_VERSION LB_OLD_VERSION")
    deploy.add_argument("--rollback", help="command that puts the old code back (default: --update "
                        "with {version} the old version)")
    deploy.add_argument("--batch", default="1", help="nodes at a time after the canary: N or N%% (default 1)")
    deploy.add_argument("--canary", type=int, default=1, help="nodes of the first batch, alone (default 1)")
    deploy.add_argument("--bake", help="watch time after each batch (default 10s)")
    deploy.add_argument("--canary-bake", help="watch time after the canary (default 3 x --bake)")
    deploy.add_argument("--max-error-rate", type=float, default=0.01,
                        help="how far a batch's 5xx rate may exceed the old version's (default 0.01)")
    deploy.add_argument("--max-p99-ratio", type=float, default=2.0,
                        help="a batch's p99 over the old version's (default 2.0)")
    deploy.add_argument("--health-timeout", default="60s", help="for a node to be up after ready")
    deploy.add_argument("--drain-timeout", default="30s", help="for a node to be drained")
    deploy.add_argument("--update-timeout", default="10m", help="for the update command")
    deploy.add_argument("--min-ready", default="80%", help="weight that stays in service (default 80%%)")
    deploy.add_argument("--no-rollback-done", action="store_true",
                        help="on failure roll back only the failing batch")
    gates = deploy.add_argument_group("gates", "what must hold before a batch counts as good (docs/deploying.md#gates)")
    gates.add_argument("--verify", metavar="CMD", help="run once per node when it is up at weight 0, before "
                       "any user: a smoke test. Placeholders and env as --update's, and LB_URL (lb, --lb-url) with "
                       "LB_VERSION_HEADER ('X-Lb-Version: v2'); exit != 0 fails the node. Through LB_URL the header "
                       "reaches the canary only from skew.override_from (warned when empty), and later batches' "
                       "requests go to the version's nodes in service, not this one: to test this node, use "
                       "$LB_HOST:$LB_PORT")
    gates.add_argument("--verify-timeout", default="60s", help="for the --verify command (default 60s)")
    gates.add_argument("--lb-url", help="lb's own listener, as LB_URL for --verify (default: the first lb's "
                       "first listener, from its show info; on an ssh target's host when it listens on every address)")
    gates.add_argument("--version-header", help="the header that names a version, in LB_VERSION_HEADER "
                       "(default: the first lb's pinning.header)")
    gates.add_argument("--check", metavar="CMD", action="append", help="run on each node of a batch at the start "
                       "of its bake, every --check-interval and at its end; exit != 0 fails the batch (repeatable)")
    gates.add_argument("--check-interval", default="10s", help="between checks and gates in a bake (default 10s)")
    gates.add_argument("--check-timeout", default="30s", help="for each --check command (default 30s)")
    gates.add_argument("--prometheus", metavar="URL", help="the Prometheus that --gate queries ask")
    gates.add_argument("--gate", metavar="'NAME: QUERY OP THRESHOLD'", action="append",
                       help="a PromQL instant query and its bar (OP: < <= > >= == !=), placeholders {version} "
                       "{old_version} {nodes}; asked every --check-interval and at the bake's end (repeatable)")
    gates.add_argument("--gate-tries", type=int, default=3, help="inconclusive answers in a row (no data, an "
                       "error) that fail the batch (default 3)")
    gates.add_argument("--min-requests", type=int, default=100, help="requests the batch must serve in its bake; "
                       "the bake extends up to --bake-max to reach them (default 100; 0: none)")
    gates.add_argument("--bake-max", help="how long a bake may extend for --min-requests (default 5 x the bake)")
    gates.add_argument("--allow-thin-bakes", action="store_true", help="a bake short of --min-requests at "
                       "--bake-max passes with a warning instead of failing the batch")
    deploy.add_argument("--state", default="deploy.state", help="progress file (default deploy.state)")
    deploy.add_argument("--log", help="deploy log with the commands' output (default: beside --state)")
    deploy.add_argument("--resume", action="store_true", help="continue the deploy recorded in --state")
    deploy.add_argument("--dry-run", action="store_true", help="print the plan after checking lb, nodes "
                        "and --min-ready; change nothing")
    deploy.add_argument("--write-config", metavar="FILE", help="when done, set the nodes' new versions in "
                        "this lb config file (comments and layout kept)")
    deploy.set_defaults(func=cmd_deploy)

    backend = sub.add_parser("backend", help="the demo/test app server")
    backend.add_argument("--listen", required=True, help="HOST:PORT")
    backend.add_argument("--version", required=True)
    backend.add_argument("--name")
    backend.add_argument("--warmup", type=float, default=0.0, help="seconds /health answers 503")
    backend.add_argument("--fail-rate", type=float, default=0.0,
                         help="fraction of requests (not /health) answered 500")
    backend.add_argument("--grace", type=float, default=0.0, metavar="SECONDS",
                         help="on SIGTERM, first ask lb to drain it (/health answers 404) for this "
                         "long while serving, then stop (default 0: stop at once)")
    backend.add_argument("--pidfile", help="write the pid here once listening")
    backend.add_argument("--replace", action="store_true",
                         help="first stop the backend --pidfile names, and wait until it is gone")
    backend.add_argument("--detach", action="store_true",
                         help="run in the background; return once it listens")
    backend.add_argument("--log", help="with --detach: append the server's output here")
    backend.add_argument("--spa", action="store_true", help="serve a single-page app: / is an HTML page "
                         "naming hashed, immutable assets of this version; other versions' assets 404")
    backend.add_argument("--chunks", type=int, default=4, metavar="N",
                         help="with --spa: lazy chunks the page names besides the app (default 4)")
    backend.add_argument("--asset-bytes", type=int, default=4096, metavar="N",
                         help="with --spa: size of each asset (default 4096)")
    backend.set_defaults(func=cmd_backend)

    demo = sub.add_parser("demo", help="10 backends + lb + live traffic + a v1 -> v2 rolling deploy")
    demo.add_argument("-c", "--config", help="config file (default: the embedded one)")
    demo.add_argument("--bad", action="store_true", help="deploy a v2 that fails 10%% of requests")
    demo.add_argument("--users", type=int, default=20, help="users at a time (default 20)")
    demo.add_argument("--port-base", type=int, metavar="N", help="move the embedded config's ports: lb on N, "
                      "/metrics on N+1, the backends on N+2 and up (default: 8080, 9900, 9001-9010)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
