"""``hvdm gateway``: the VMBus gateway of the distributed deployment (Kafka topics behind it)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys

from services.cli.arg_types import BROKER, HOST_PORT
from services.cli.metrics_args import add_metrics_arguments, metrics_labels_of
from services.cli.units import size_arg


def _run(args: argparse.Namespace) -> int:
    from services.kafka_engine.gateway import HostSpec, serve
    from services.kafka_engine.settings import KafkaSettings, SettingsError
    from services.rebalancer.kafka_hosts import valid_host_name

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    try:
        settings = KafkaSettings.from_url(args.broker)
    except SettingsError as exc:
        print(f"hvdm: gateway error: {exc}", file=sys.stderr)
        return 1
    if not valid_host_name(args.host_name):
        print(
            f"hvdm: gateway error: --host-name must be 1..253 printable characters: {args.host_name!r}", file=sys.stderr
        )
        return 1
    if not args.socket and not args.tcp:
        print("hvdm: gateway error: give --socket PATH and/or --tcp HOST:PORT", file=sys.stderr)
        return 1
    try:
        host = HostSpec(args.host_name, args.host_capacity, args.host_reserve)
        return asyncio.run(
            serve(
                settings,
                unix_path=args.socket or None,
                tcp=args.tcp,
                metrics=(args.metrics_host, args.metrics_port) if args.metrics_port is not None else None,
                metrics_labels=metrics_labels_of(args),
                host=host,
            )
        )
    except KeyboardInterrupt:
        return 130


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("gateway", help="run the VMBus gateway against Kafka (distributed deployment)")
    p.add_argument(
        "--broker", type=BROKER, required=True, help="kafka://HOST:PORT[?prefix=...&partitions=N] (see docs)"
    )
    p.add_argument("--socket", default="hvdm.sock", help="UNIX socket for guests ('' to disable)")
    p.add_argument("--tcp", type=HOST_PORT, help="also listen on HOST:PORT for guests")
    add_metrics_arguments(p, what="gateway")
    p.add_argument(
        "--host-name", default=socket.gethostname(), help="the host this gateway serves (default: this machine's name)"
    )
    p.add_argument("--host-capacity", type=size_arg, metavar="SIZE", help="RAM for VMs (default: RAM - reserve)")
    p.add_argument("--host-reserve", type=size_arg, default=2 << 30, metavar="SIZE", help="RAM kept for the host (2G)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_run)
