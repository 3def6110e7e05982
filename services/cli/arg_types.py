"""Argument types for every ``hvdm`` flag: each refuses a bad value with a one-line usage error.

Why bounded types instead of ``type=int``: ``--guests -1``, ``--batch 0``, ``--speed nan`` or
``--guest-memory 1e99`` parse as numbers and then fail deep inside the command, with a traceback
or, worse, exit 0. Every numeric or path flag names its range here, next to the limits the
engine and the wire format impose (``dm_engine.limits``), and the parser (``main.CliParser``)
turns the refusal into ``hvdm: error: ...`` and exit status 2.

Each type is a small callable object whose bounds are attributes, so ``tests/faults`` can walk the
real parser and try values just outside them for every flag of every command, including flags
added later. A flag with a bare ``type=int`` or ``type=float`` fails that test.

>>> IntArg(1, 100)("7"), FloatArg(0.0, 10.0, low_open=True)("2.5"), SizeArg(1)("4G")
(7, 2.5, 4294967296)
>>> IntArg(1, 100)("0")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: must be an integer in [1, 100], got '0'
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..dm_engine.limits import MAX_MEMORY_BYTES, MAX_RECORD_INT, MIN_RECORD_INT, valid_vm_id
from .units import parse_size

ArgError = argparse.ArgumentTypeError


def _quote(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


@dataclass(frozen=True, slots=True)
class IntArg:
    """An integer in ``[low, high]``; ``base=0`` also accepts ``0x`` literals."""

    low: int = MIN_RECORD_INT
    high: int = MAX_RECORD_INT
    base: int = 10

    def __call__(self, text: str) -> int:
        try:
            value = int(text.strip(), self.base)
        except ValueError:
            value = None
        if value is None or not self.low <= value <= self.high:
            raise ArgError(f"must be an integer in [{self.low}, {self.high}], got {_quote(text)}")
        return value


@dataclass(frozen=True, slots=True)
class FloatArg:
    """A finite number in ``[low, high]`` (``(low, high]`` with ``low_open``): never NaN or inf."""

    low: float
    high: float
    low_open: bool = False

    def __call__(self, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        above_low = value > self.low if self.low_open else value >= self.low
        if not math.isfinite(value) or not above_low or value > self.high:
            bracket = "(" if self.low_open else "["
            raise ArgError(f"must be a number in {bracket}{self.low:g}, {self.high:g}], got {_quote(text)}")
        return value


@dataclass(frozen=True, slots=True)
class SizeArg:
    """A memory size (``4G``, ``512M``, bytes) in ``[low, high]`` bytes and a multiple of ``align``."""

    low: int = 0
    high: int = MAX_MEMORY_BYTES
    align: int = 1

    def __call__(self, text: str) -> int:
        try:
            value = parse_size(text)
        except ValueError as e:
            raise ArgError(str(e)) from None
        if not self.low <= value <= self.high:
            raise ArgError(f"must be a size in [{self.low}, {self.high}] bytes, got {_quote(text)}")
        if value % self.align:
            raise ArgError(f"must be a multiple of {self.align} bytes, got {_quote(text)}")
        return value


@dataclass(frozen=True, slots=True)
class PortArg:
    """A TCP port; 0 asks the system for a free one."""

    def __call__(self, text: str) -> int:
        return IntArg(0, 65535)(text)


@dataclass(frozen=True, slots=True)
class HostPortArg:
    """``HOST:PORT`` (``:PORT`` or ``PORT`` alone mean 127.0.0.1; ``[::1]:PORT`` for IPv6)."""

    def __call__(self, text: str) -> tuple[str, int]:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = "", text
        host = host.removeprefix("[").removesuffix("]")
        try:
            number = PortArg()(port)
        except ArgError:
            raise ArgError(f"must be HOST:PORT with a port in [0, 65535], got {_quote(text)}") from None
        if any(c.isspace() for c in host):
            raise ArgError(f"must be HOST:PORT, got {_quote(text)}")
        return host or "127.0.0.1", number


@dataclass(frozen=True, slots=True)
class BrokerArg:
    """A broker URL ``kafka://HOST:PORT[?option=value...]``, checked as the Kafka settings parse it."""

    def __call__(self, text: str) -> str:
        from ..kafka_engine.settings import KafkaSettings, SettingsError

        try:
            KafkaSettings.from_url(text)
        except (SettingsError, ValueError) as e:
            raise ArgError(str(e)) from None
        return text


@dataclass(frozen=True, slots=True)
class OutputPathArg:
    """A file the command will write: its directory must exist and be writable, and the path must
    not be a directory. Checked before the (possibly long) command runs, not after."""

    def __call__(self, text: str) -> str:
        if not text or "\0" in text:
            raise ArgError(f"not a file name: {_quote(text)}")
        path = Path(text)
        parent = path.parent if str(path.parent) else Path(".")
        if path.is_dir():
            raise ArgError(f"{text} is a directory")
        if not parent.is_dir():
            raise ArgError(f"directory {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise ArgError(f"cannot write {text}")
        return text


@dataclass(frozen=True, slots=True)
class VmIdArg:
    """A VM id as the gateway accepts it (``limits.VM_ID``, the whole string)."""

    def __call__(self, text: str) -> str:
        if not valid_vm_id(text):
            raise ArgError(f"not a VM id (letters, digits, '_', '.', '-'; at most 64): {_quote(text)}")
        return text


#: Shared instances for the common cases.
SEED = IntArg(MIN_RECORD_INT, MAX_RECORD_INT)
NON_NEGATIVE = IntArg(0, MAX_RECORD_INT)
POSITIVE = IntArg(1, MAX_RECORD_INT)
PORT = PortArg()
HOST_PORT = HostPortArg()
BROKER = BrokerArg()
OUTPUT_PATH = OutputPathArg()
VM_ID = VmIdArg()
#: Seconds for timeouts and intervals: positive, at most a day.
SECONDS = FloatArg(0.0, 86400.0, low_open=True)
