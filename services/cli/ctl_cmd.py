"""``hvdm ctl VM ...``: drive one VM through its QMP socket, with the HMP words QEMU users know.

Examples (as in the seed's HMP session)::

    hvdm ctl vm1 balloon 1024                                  # MiB
    hvdm ctl vm1 info balloon
    hvdm ctl vm1 object_add memory-backend-ram,id=mem1,size=200G
    hvdm ctl vm1 hv-balloon-add-memory id=mem1
    hvdm ctl vm1 object_del mem1
    hvdm ctl vm1 info memory-devices
    hvdm ctl vm1 forget                                        # retire a disconnected VM
    hvdm ctl vm1 events [--count N]                            # follow QMP events (JSON lines)
    hvdm ctl vm1 qmp query-balloon ['{"arg": ...}']            # raw QMP, JSON out

The text is parsed here with the same parser the server uses for ``human-monitor-command`` and
sent as the QMP command it stands for, through QEMU's own client library (``qemu.qmp``), so the
exit status can tell a QMP error (1) from a usage or connection problem (2).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, ExecuteError, QMPClient

from ..qmp import hmp
from ..qmp.paths import default_qmp_dir, socket_path
from .arg_types import SECONDS, VM_ID, IntArg
from .config_file import add_config_argument
from .main import CliParser

EXIT_QMP_ERROR = 1
EXIT_USAGE = 2


async def _connect(sock: Path, timeout: float) -> QMPClient:
    client = QMPClient("hvdm-ctl")
    await asyncio.wait_for(client.connect(str(sock)), timeout)
    return client


async def _execute(sock: Path, command: str, arguments: dict[str, Any], timeout: float) -> Any:
    client = await _connect(sock, timeout)
    try:
        return await asyncio.wait_for(client.execute(command, arguments or None), timeout)
    finally:
        await client.disconnect()


async def _follow_events(sock: Path, count: int | None, timeout: float) -> int:
    client = await _connect(sock, timeout)
    seen = 0
    try:
        async for event in client.events:
            sys.stdout.write(json.dumps(dict(event), sort_keys=True) + "\n")
            sys.stdout.flush()
            seen += 1
            if count is not None and seen >= count:
                break
    finally:
        await client.disconnect()
    return 0


def _run_async(args: argparse.Namespace, sock: Path) -> int:
    words: list[str] = args.words
    timeout: float = args.timeout
    if words[0] == "events":
        ev = CliParser(prog="hvdm ctl VM events")
        ev.add_argument("--count", type=IntArg(1, 1 << 62), default=None, help="stop after N events")
        opts = ev.parse_args(words[1:])
        return asyncio.run(_follow_events(sock, opts.count, timeout))
    if words[0] == "qmp":
        if len(words) not in (2, 3):
            print("usage: hvdm ctl VM qmp COMMAND [JSON-ARGUMENTS]", file=sys.stderr)
            return EXIT_USAGE
        arguments = json.loads(words[2]) if len(words) == 3 else {}
        result = asyncio.run(_execute(sock, words[1], arguments, timeout))
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    try:
        parsed = hmp.parse_line(" ".join(words))
    except hmp.HmpError as e:
        print(e, file=sys.stderr)
        return EXIT_USAGE
    if parsed.qmp_command is None:
        sys.stdout.write(parsed.text)
        return 0
    result = asyncio.run(_execute(sock, parsed.qmp_command, parsed.arguments, timeout))
    sys.stdout.write(parsed.render(result))
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG)
    else:
        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)  # we report failures ourselves
    if not args.words:
        print("hvdm ctl: missing command (try: hvdm ctl VM help)", file=sys.stderr)
        return EXIT_USAGE
    sock = socket_path(args.qmp_dir, args.vm)
    try:
        return _run_async(args, sock)
    except ExecuteError as e:
        # One line even when the desc quotes a client string with a newline in it.
        desc = e.error.error.desc.replace("\r", " ").replace("\n", " ")
        print(f"Error: {desc} ({e.error.error.class_})", file=sys.stderr)
        return EXIT_QMP_ERROR
    except (ConnectError, OSError, TimeoutError) as e:
        print(f"hvdm ctl: cannot talk to VM {args.vm!r} at {sock}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except json.JSONDecodeError as e:
        print(f"hvdm ctl: arguments are not JSON: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0  # following events until interrupted is the normal way to stop


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "ctl",
        help="control one VM over its QMP socket with HMP-style commands (balloon, info balloon, ...)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_argument(parser)
    parser.add_argument("--qmp-dir", type=Path, default=default_qmp_dir(), help="directory of the per-VM QMP sockets")
    parser.add_argument("--timeout", type=SECONDS, default=10.0, help="seconds to wait for the service")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the QMP conversation")
    parser.add_argument("vm", type=VM_ID, help="VM id")
    parser.add_argument("words", nargs=argparse.REMAINDER, help="HMP command, 'events' or 'qmp CMD [JSON]'")
    parser.set_defaults(func=_run)
