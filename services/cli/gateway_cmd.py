"""``hvdm gateway``: the VMBus gateway of the distributed deployment (Kafka topics behind it)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def _run(args: argparse.Namespace) -> int:
    from services.kafka_engine.gateway import QemuOptions, serve
    from services.kafka_engine.settings import KafkaSettings, SettingsError

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    try:
        settings = KafkaSettings.from_url(args.broker)
    except SettingsError as exc:
        print(f"hvdm: gateway error: {exc}", file=sys.stderr)
        return 1
    qemu = QemuOptions(tuple(args.qemu or ()), args.qemu_dir, args.qemu_poll, args.qemu_trace)
    if not args.socket and not args.tcp and not qemu.addresses and not qemu.directory:
        print("hvdm: gateway error: give --socket PATH and/or --tcp HOST:PORT", file=sys.stderr)
        return 1
    try:
        return asyncio.run(
            serve(settings, unix_path=args.socket or None, tcp=_hostport(args.tcp) if args.tcp else None, qemu=qemu)
        )
    except KeyboardInterrupt:
        return 130


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("gateway", help="run the VMBus gateway against Kafka (distributed deployment)")
    p.add_argument("--broker", required=True, help="kafka://HOST:PORT[?prefix=...&partitions=N] (see docs)")
    p.add_argument("--socket", default="hvdm.sock", help="UNIX socket for guests ('' to disable)")
    p.add_argument("--tcp", help="also listen on HOST:PORT for guests")
    from services.cli.run_cmd import _poll_seconds, _qemu_address

    p.add_argument(
        "--qemu", action="append", type=_qemu_address, metavar="SOCKET", help="attach a real QEMU VM's QMP monitor"
    )
    p.add_argument("--qemu-dir", help="attach every QMP monitor socket appearing in DIR")
    p.add_argument("--qemu-poll", type=_poll_seconds, default=1.0, help="seconds between QEMU polls (default 1)")
    p.add_argument("--qemu-trace", help="follow QEMU's hv_balloon_* trace file")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_run)
