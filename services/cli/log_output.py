"""``--log-level`` and ``--log-format``: where the services' log lines go and what they look like.

Why JSON as well as text: a host's log collector (journald, Loki, Elasticsearch) indexes fields, and
the question asked of hvdm's log is almost always "what happened to VM x". Every line of
``--log-format json`` is one JSON object with ``time`` (ISO 8601, UTC), ``level``, ``logger``,
``message`` and, when the line is about one VM, ``vm``: taken from ``extra={"vm": ...}`` or from the
``vm=...`` field hvdm's key=value messages already carry. Logs go to stderr; stdout stays for the
commands' output (``--json`` summaries).

>>> import json, logging
>>> record = logging.LogRecord("hvdm.gateway", logging.WARNING, "", 0, "event=refused vm=%s", ("vm7",), None)
>>> record.created = 0.0
>>> line = JsonFormatter().format(record)
>>> json.loads(line)["vm"], json.loads(line)["time"], json.loads(line)["level"]
('vm7', '1970-01-01T00:00:00.000Z', 'warning')
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

_VM_FIELD = re.compile(r"(?:^|[\s,(])vm=([A-Za-z0-9][A-Za-z0-9_.-]{0,63})")


class JsonFormatter(logging.Formatter):
    """One JSON object per line (newlines inside a message stay escaped inside the string)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        seconds = time.gmtime(record.created)
        millis = int(record.created * 1000) % 1000
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{millis:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        vm = getattr(record, "vm", None)
        if vm is None:
            found = _VM_FIELD.search(message)
            vm = found.group(1) if found else None
        if vm is not None:
            out["vm"] = str(vm)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), ensure_ascii=False)


def add_log_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", choices=LEVELS, help="least severe log level shown (default warning; -v: info)")
    p.add_argument("--log-format", choices=FORMATS, default="text", help="text (default) or json (one object a line)")


def level_of(args: argparse.Namespace) -> int:
    """``--log-level`` if given (or set by the config file), else info with ``-v``, else warning."""
    name = getattr(args, "log_level", None)
    if name is None:
        return logging.INFO if getattr(args, "verbose", False) else logging.WARNING
    level: int = getattr(logging, name.upper())
    return level


def configure_logging(args: argparse.Namespace) -> None:
    """Install the one stderr handler of the process (replacing any earlier one)."""
    handler = logging.StreamHandler(sys.stderr)
    if getattr(args, "log_format", "text") == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_of(args))
