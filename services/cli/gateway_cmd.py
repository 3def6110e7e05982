"""``hvdm gateway``: the VMBus gateway of the distributed deployment (Kafka topics behind it)."""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys

from .arg_types import BROKER, HOST_PORT, VM_ID
from .config_file import add_config_argument
from .gateway_args import add_gateway_arguments, gateway_auth, gateway_limits
from .kafka_args import add_compression_flag
from .log_output import add_log_arguments
from .main import EXIT_USAGE, error_line
from .metrics_args import add_metrics_arguments, metrics_labels_of
from .units import size_arg


def _token(args: argparse.Namespace) -> int:
    """Print a VM's token, for the guest side's hello (``"token"``)."""
    from ..vmbus_gateway.auth import AuthConfigError, read_secret, vm_token

    path = args.secret_file or args.token_secret_file
    if not path:
        print(error_line("gateway token", "give --token-secret-file FILE"), file=sys.stderr)
        return EXIT_USAGE
    try:
        print(vm_token(read_secret(path), args.vm))
    except AuthConfigError as e:
        print(error_line("gateway token", e), file=sys.stderr)
        return EXIT_USAGE
    return 0


def _run(args: argparse.Namespace) -> int:
    from ..kafka_engine.gateway import QemuOptions, serve
    from ..kafka_engine.settings import KafkaSettings, SettingsError
    from ..rebalancer.kafka_hosts import HostSpec, valid_host_name
    from ..vmbus_gateway.auth import AuthConfigError

    if getattr(args, "gateway_command", None) == "token":
        return _token(args)
    if not args.broker:
        print(error_line("gateway", "give --broker kafka://HOST:PORT"), file=sys.stderr)
        return EXIT_USAGE

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
    qemu = QemuOptions(tuple(args.qemu or ()), args.qemu_dir, args.qemu_poll, args.qemu_trace)
    if not args.socket and not args.tcp and not qemu.addresses and not qemu.directory:
        print("hvdm: gateway error: give --socket PATH and/or --tcp HOST:PORT", file=sys.stderr)
        return 1
    try:
        auth = gateway_auth(args)
    except AuthConfigError as e:
        print(error_line("gateway", e), file=sys.stderr)
        return EXIT_USAGE
    from ..systemd_notify import Notifier

    notifier = Notifier.from_environ()
    try:
        host = HostSpec(args.host_name, args.host_capacity, args.host_reserve)
        return asyncio.run(
            serve(
                settings,
                unix_path=args.socket or None,
                tcp=args.tcp,
                metrics=(args.metrics_host, args.metrics_port) if args.metrics_port is not None else None,
                metrics_labels=metrics_labels_of(args),
                auth=auth,
                limits=gateway_limits(args),
                backend=host.backend(settings),
                qemu=qemu,
                notifier=notifier,
            )
        )
    except KeyboardInterrupt:
        return 130
    finally:
        notifier.close()


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("gateway", help="run the VMBus gateway against Kafka (distributed deployment)")
    p.add_argument(
        "--broker", type=BROKER, help="kafka://HOST:PORT[?prefix=...&partitions=N] (see docs); required to serve"
    )
    add_compression_flag(p)
    p.add_argument("--socket", default="hvdm.sock", help="UNIX socket for guests ('' to disable)")
    p.add_argument("--tcp", type=HOST_PORT, help="also listen on HOST:PORT for guests")
    add_metrics_arguments(p, what="gateway")
    p.add_argument(
        "--host-name", default=socket.gethostname(), help="the host this gateway serves (default: this machine's name)"
    )
    p.add_argument("--host-capacity", type=size_arg, metavar="SIZE", help="RAM for VMs (default: RAM - reserve)")
    p.add_argument("--host-reserve", type=size_arg, default=2 << 30, metavar="SIZE", help="RAM kept for the host (2G)")
    from .arg_types import FloatArg
    from .run_cmd import _qemu_address

    p.add_argument(
        "--qemu", action="append", type=_qemu_address, metavar="SOCKET", help="attach a real QEMU VM's QMP monitor"
    )
    p.add_argument("--qemu-dir", help="attach every QMP monitor socket appearing in DIR")
    p.add_argument(
        "--qemu-poll", type=FloatArg(0.05, 3600.0), default=1.0, help="seconds between QEMU polls (default 1)"
    )
    p.add_argument("--qemu-trace", help="follow QEMU's hv_balloon_* trace file")
    p.add_argument("-v", "--verbose", action="store_true", help="log at info level (see --log-level)")
    add_log_arguments(p)
    add_config_argument(p)
    add_gateway_arguments(p)
    sub = p.add_subparsers(dest="gateway_command", metavar="{token}")
    t = sub.add_parser("token", help="print a VM's token: HMAC-SHA256(host secret, VM id), hex")
    t.add_argument("vm", type=VM_ID, help="the VM id")
    t.add_argument("--token-secret-file", dest="secret_file", metavar="FILE", help="the host secret")
    p.set_defaults(func=_run)
