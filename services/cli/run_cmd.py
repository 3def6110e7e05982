"""``hvdm run``: the embedded service (the README's main command)."""

from __future__ import annotations

import argparse
import logging

from services.cli.units import size_arg
from services.embedded.run import RunConfig, main_run


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def _qemu_address(text: str) -> str:
    """``argparse`` type for ``--qemu``: a UNIX socket path or ``tcp:HOST:PORT``."""
    from services.qemu_agent.address import parse_address

    try:
        parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _poll_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError("--qemu-poll must be between 0.05 and 3600 seconds")
    return value


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.WARNING if not args.verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    speed = args.speed
    if speed is None:
        # The demo story spans minutes of guest time (45 s status delay, 50 s post-init wait).
        speed = 25.0 if args.scenario == "demo" else 1.0
    cfg = RunConfig(
        db=args.db,
        socket=args.socket or None,
        tcp=_hostport(args.tcp) if args.tcp else None,
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
        qmp_dir=args.qmp_dir,
        progress_interval=args.progress_interval,
        json_summary=args.json,
        fresh=args.fresh,
        broker=args.broker,
        qemu=tuple(args.qemu or ()),
        qemu_dir=args.qemu_dir,
        qemu_poll=args.qemu_poll,
        qemu_trace=args.qemu_trace,
    )
    return main_run(cfg)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("run", help="run the embedded service (SQLite log, gateway, engine)")
    p.add_argument("--db", default="hvdm.db", help="SQLite log file (default ./hvdm.db)")
    p.add_argument("--socket", default="hvdm.sock", help="gateway UNIX socket ('' to disable)")
    p.add_argument("--tcp", help="also listen on HOST:PORT for guests")
    p.add_argument("--guests", type=int, default=0, help="start N simulated guests")
    p.add_argument("--guest-memory", type=size_arg, default="4G", help="boot memory of each simulated guest")
    p.add_argument("--guest-maxmem", type=size_arg, default="64G", help="maxmem of each simulated guest")
    p.add_argument("--guest-profile", default="linux", help="simulated guest profile (linux, windows, malicious, ...)")
    p.add_argument("--workload", default="steady", help="guest workload (idle, steady, diurnal, bursty, leak)")
    p.add_argument("--speed", type=float, help="simulated seconds per wall second (default 1; 25 with --scenario demo)")
    p.add_argument("--scenario", choices=["none", "demo"], default="none", help="scripted story per VM")
    p.add_argument("--duration", type=float, help="exit after SECONDS of wall time")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address for /metrics (0.0.0.0 in containers)")
    p.add_argument("--qmp-dir", help="directory for per-VM QMP sockets (DIR/<vm>.sock)")
    p.add_argument("--progress-interval", type=float, default=2.0, help="seconds between progress tables (0: off)")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.add_argument(
        "--fresh", action="store_true", help="move an existing --db aside (PATH.<timestamp>.bak) and start a new log"
    )
    p.add_argument("--broker", help="run on Kafka instead: kafka://HOST:PORT (gateway, engine worker, guests)")
    p.add_argument(
        "--qemu",
        action="append",
        type=_qemu_address,
        metavar="SOCKET",
        help="attach a real QEMU VM through its QMP monitor (UNIX path or tcp:HOST:PORT; repeatable)",
    )
    p.add_argument("--qemu-dir", help="attach every QMP monitor socket appearing in DIR (detach when it goes)")
    p.add_argument("--qemu-poll", type=_poll_seconds, default=1.0, help="seconds between QEMU polls (default 1)")
    p.add_argument("--qemu-trace", help="follow QEMU's hv_balloon_* trace file for page-level accounting")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_run)
