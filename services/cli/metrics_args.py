"""The ``--metrics-*`` flags that ``hvdm run``, ``hvdm engine`` and ``hvdm gateway`` share.

One definition, so the three commands name and check them alike: the listening address, and the
labels that let hvdm's series join other exporters' (``host``; the VM id as ``vm`` and/or libvirt's
``domain``; a ``uuid`` from a file mapping VM ids to QEMU/libvirt UUIDs).
"""

from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path
from typing import Any

from ..metrics.collector import LabelError, MetricsLabels, parse_vm_labels
from .arg_types import PORT


def vm_labels_arg(text: str) -> tuple[str, ...]:
    try:
        return parse_vm_labels(text)
    except LabelError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def uuid_file_arg(text: str) -> dict[str, str]:
    """A JSON object ``{"vm id": "uuid", ...}``, checked when the flag is parsed."""
    try:
        data: Any = json.loads(Path(text).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise argparse.ArgumentTypeError(f"{text}: expected a JSON object of VM id -> UUID strings")
    try:
        MetricsLabels(uuids=data)
    except LabelError as e:
        raise argparse.ArgumentTypeError(f"{text}: {e}") from None
    return data


def add_metrics_arguments(p: argparse.ArgumentParser, *, what: str = "engine") -> None:
    p.add_argument("--metrics-port", type=PORT, help=f"serve the {what}'s Prometheus /metrics on this port")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address for /metrics (0.0.0.0 in containers)")
    p.add_argument(
        "--metrics-host-label", help="value of the 'host' label of every series (default: this machine's hostname)"
    )
    p.add_argument(
        "--metrics-vm-label",
        type=vm_labels_arg,
        default=("vm",),
        help="label name(s) carrying the VM id: vm (default), domain (libvirt's) or vm,domain",
    )
    p.add_argument(
        "--metrics-uuid-file",
        type=uuid_file_arg,
        help="JSON object of VM id -> QEMU/libvirt UUID for the 'uuid' label (overrides a hello's or QEMU's)",
    )


def metrics_labels_of(args: argparse.Namespace) -> MetricsLabels:
    host = args.metrics_host_label if args.metrics_host_label is not None else socket.gethostname()
    return MetricsLabels(host=host, vm_labels=tuple(args.metrics_vm_label), uuids=args.metrics_uuid_file or {})
