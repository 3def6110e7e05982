"""QMP monitor addresses: a UNIX socket path or ``tcp:HOST:PORT``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QmpAddress:
    path: str | None = None
    host: str | None = None
    port: int | None = None

    @property
    def target(self) -> str | tuple[str, int]:
        """What ``QMPClient.connect`` takes."""
        if self.path is not None:
            return self.path
        assert self.host is not None and self.port is not None
        return (self.host, self.port)

    def __str__(self) -> str:
        return self.path if self.path is not None else f"tcp:{self.host}:{self.port}"


def parse_address(text: str) -> QmpAddress:
    """Parse ``tcp:HOST:PORT`` or a path; raises ``ValueError`` with a one-line reason.

    >>> parse_address("tcp:127.0.0.1:4444"), str(parse_address("/run/vm1.qmp"))
    (QmpAddress(path=None, host='127.0.0.1', port=4444), '/run/vm1.qmp')
    """
    if not text:
        raise ValueError("empty QMP address")
    if text.startswith("tcp:"):
        host, sep, port = text[4:].rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad QMP address {text!r}: expected tcp:HOST:PORT")
        return QmpAddress(host=host.strip("[]"), port=int(port))
    if len(text.encode()) > 107:
        raise ValueError(f"QMP socket path too long for a UNIX socket: {text!r}")
    return QmpAddress(path=text)
