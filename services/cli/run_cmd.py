"""``hvdm run``: the embedded service (the README's main command)."""

from __future__ import annotations

import argparse
import sys

from ..embedded.run import RunConfig, main_run
from ..event_log.sqlite_log import NotAnHvdmLog
from ..event_log.writer_lock import LogLockError
from ..guest_sim.profiles import PROFILES
from ..guest_sim.workload import WORKLOADS
from ..qmp.paths import default_qmp_dir
from ..socket_files import SocketPathInUse
from .arg_types import BROKER, HOST_PORT, SEED, FloatArg, IntArg, SizeArg
from .config_file import add_config_argument, config_of
from .gateway_args import add_gateway_arguments, gateway_auth, gateway_limits
from .kafka_args import add_compression_flag
from .log_output import add_log_arguments
from .main import EXIT_ERROR, EXIT_USAGE, error_line
from .metrics_args import add_metrics_arguments, metrics_labels_of

#: Simulated guests' RAM: what ``GuestConfig`` accepts (2 MiB granules), up to what hvdm can address.
GUEST_MEMORY = SizeArg(2 << 20, 1 << 50, align=2 << 20)


def _qemu_address(text: str) -> str:
    """``argparse`` type for ``--qemu``: a UNIX socket path or ``tcp:HOST:PORT``."""
    from ..qemu_agent.address import parse_address

    try:
        parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _run(args: argparse.Namespace) -> int:
    if args.guest_maxmem < args.guest_memory:
        print(error_line("run", "--guest-maxmem must be at least --guest-memory"), file=sys.stderr)
        return EXIT_USAGE
    speed = args.speed
    if speed is None:
        # The demo story spans minutes of guest time (45 s status delay, 50 s post-init wait).
        speed = 25.0 if args.scenario == "demo" else 1.0
    from ..vmbus_gateway.auth import AuthConfigError

    try:
        auth = gateway_auth(args)
    except AuthConfigError as e:
        print(error_line("run", e), file=sys.stderr)
        return EXIT_USAGE
    cfg = RunConfig(
        db=args.db,
        socket=args.socket or None,
        tcp=args.tcp,
        guests=args.guests,
        guest_memory=args.guest_memory,
        guest_maxmem=args.guest_maxmem,
        guest_profile=args.guest_profile,
        workload=args.workload,
        speed=speed,
        scenario=args.scenario,
        duration=args.duration,
        seed=args.seed,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        metrics_labels=metrics_labels_of(args),
        qmp_dir=args.qmp_dir or None,
        progress_interval=args.progress_interval,
        json_summary=args.json,
        fresh=args.fresh,
        broker=args.broker,
        auth=auth,
        gateway_limits=gateway_limits(args),
        qemu=tuple(args.qemu or ()),
        qemu_dir=args.qemu_dir,
        qemu_poll=args.qemu_poll,
        qemu_trace=args.qemu_trace,
        engine_config=config_of(args).engine_config(),
    )
    try:
        if cfg.broker:
            # The Kafka deployment (gateway + engine workers + guests on the topics).
            from ..kafka_engine.run import run_on_broker

            return main_run(cfg, run_on_broker)
        return main_run(cfg)
    except (NotAnHvdmLog, LogLockError, SocketPathInUse) as exc:
        # Refused before anything started or changed: the path is named in the message.
        print(error_line("run", exc), file=sys.stderr)
        return EXIT_ERROR


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("run", help="run the embedded service (SQLite log, gateway, engine)")
    p.add_argument("--db", default="hvdm.db", help="SQLite log file (default ./hvdm.db)")
    p.add_argument("--socket", default="hvdm.sock", help="gateway UNIX socket ('' to disable)")
    p.add_argument("--tcp", type=HOST_PORT, help="also listen on HOST:PORT for guests")
    p.add_argument("--guests", type=IntArg(0, 10_000), default=0, help="start N simulated guests (at most 10000)")
    p.add_argument("--guest-memory", type=GUEST_MEMORY, default="4G", help="boot memory of each simulated guest")
    p.add_argument("--guest-maxmem", type=SizeArg(2 << 20, 1 << 50), default="64G", help="maxmem of each guest")
    p.add_argument("--guest-profile", default="linux", choices=list(PROFILES), help="simulated guest profile")
    p.add_argument("--workload", default="steady", choices=list(WORKLOADS), help="guest workload")
    p.add_argument(
        "--speed",
        type=FloatArg(0.0, 1e6, low_open=True),
        help="simulated seconds per wall second (default 1; 25 with --scenario demo)",
    )
    p.add_argument("--scenario", choices=["none", "demo"], default="none", help="scripted story per VM")
    p.add_argument("--duration", type=FloatArg(0.0, 1e9), help="exit after SECONDS of wall time")
    p.add_argument("--seed", type=SEED, default=1)
    add_metrics_arguments(p, what="service")
    p.add_argument(
        "--qmp-dir",
        default=str(default_qmp_dir()),
        help="directory for per-VM QMP sockets, DIR/<vm>.sock ('' to disable; default: hvdm ctl's, %(default)s)",
    )
    p.add_argument(
        "--progress-interval",
        type=FloatArg(0.0, 86400.0),
        default=2.0,
        help="seconds between progress tables (0: off)",
    )
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.add_argument(
        "--fresh", action="store_true", help="move an existing --db aside (PATH.<timestamp>.bak) and start a new log"
    )
    p.add_argument(
        "--broker", type=BROKER, help="run on Kafka instead: kafka://HOST:PORT (gateway, engine worker, guests)"
    )
    add_compression_flag(p)
    p.add_argument(
        "--qemu",
        action="append",
        type=_qemu_address,
        metavar="SOCKET",
        help="attach a real QEMU VM through its QMP monitor (UNIX path or tcp:HOST:PORT; repeatable)",
    )
    p.add_argument("--qemu-dir", help="attach every QMP monitor socket appearing in DIR (detach when it goes)")
    p.add_argument(
        "--qemu-poll", type=FloatArg(0.05, 3600.0), default=1.0, help="seconds between QEMU polls (default 1)"
    )
    p.add_argument("--qemu-trace", help="follow QEMU's hv_balloon_* trace file for page-level accounting")
    p.add_argument("-v", "--verbose", action="store_true", help="log at info level (see --log-level)")
    add_log_arguments(p)
    add_config_argument(p)
    add_gateway_arguments(p)
    p.set_defaults(func=_run)
