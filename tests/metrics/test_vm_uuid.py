"""A VM's UUID reaches the ``uuid`` metric label from its hello or from QEMU's ``query-uuid``.

Through the real parts: the gateway's UNIX socket and hello, the QEMU agent's ``qemu.qmp`` client
against a simulated QMP monitor, the embedded service's SQLite log (the UUID is recorded there as
a ``VmIdentified`` event, so a restarted engine and a Kafka worker know it too) and a scrape of the
real /metrics endpoint. A malformed UUID refuses the hello (counted as ``bad_uuid``) and leaves
nothing in the inbox; a malformed ``query-uuid`` answer attaches the VM without one. The
``--metrics-uuid-file`` mapping still wins over what the log recorded.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.dm_engine.config import EngineConfig
from services.dm_engine.events import VmIdentified
from services.dm_engine.records import RecordError, event_from_dict, input_from_dict, loads
from services.embedded.gateway_backend import EmbeddedBackend
from services.embedded.qemu_sink import attach_to_service
from services.embedded.service import EmbeddedService
from services.metrics import MetricsLabels, serve_for_service
from services.qemu_agent.simulated_qemu import SimulatedQemu
from services.vmbus_gateway.client import GuestLink
from services.vmbus_gateway.hello import HelloError, parse_hello
from services.vmbus_gateway.server import GatewayServer
from tests.faults.run_process import hvdm
from tests.vmbus_gateway.peers import GIB, EchoGuest, wait_for

UUID = "6b29fc40-ca47-1067-b31d-00dd010662da"
OTHER = "0e1d2c3b-4a59-6877-8695-a4b3c2d1e0f9"


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[EmbeddedService]:
    svc = EmbeddedService.open(tmp_path / "hvdm.db", speed=1000.0, config=EngineConfig(post_init_wait_ticks=1))
    await svc.start()
    yield svc
    await svc.stop()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def uuid_labels(text: str, metric: str = "hvdm_vm_current_bytes") -> dict[str, str | None]:
    return {
        s.labels["vm"]: s.labels.get("uuid")
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == metric
    }


def hello_rejected(text: str) -> dict[str, float]:
    return {
        s.labels["reason"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "hvdm_gateway_hello_rejected_total"
    }


def identified(service: EmbeddedService, vm: str) -> list[VmIdentified]:
    events = [event_from_dict(loads(row.record)) for row in service.log.iter_events(vm, 0)]
    return [e for e in events if isinstance(e, VmIdentified)]


def hello_line(vm: str, **extra: Any) -> bytes:
    data = {"hello": "hvdm/1", "vm": vm, "boot_bytes": 4 * GIB, "maxmem_bytes": 16 * GIB, **extra}
    return (json.dumps(data) + "\n").encode()


# ---------------------------------------------------------------------------------------- the hello
def test_the_hello_takes_a_canonical_uuid_in_any_case() -> None:
    assert parse_hello(hello_line("vm1", uuid=UUID.upper())).uuid == UUID
    assert parse_hello(hello_line("vm1")).uuid is None
    for bad in (
        "6b29fc40ca471067b31d00dd010662da",
        "{6b29fc40-ca47-1067-b31d-00dd010662da}",
        "urn:uuid:6b29fc40-ca47-1067-b31d-00dd010662da",
        "6b29fc40-ca47-1067-b31d-00dd010662dz",
        "6b29fc40-ca47-1067-b31d-00dd010662da\n",
        "00000000-0000-0000-0000-000000000000",
        "x" * 3000,
        42,
        [UUID],
        "",
    ):
        with pytest.raises(HelloError) as refused:
            parse_hello(hello_line("vm1", uuid=bad))
        assert refused.value.reason == "bad_uuid" and "uuid must" in str(refused.value)


def test_a_stored_record_with_a_bad_uuid_is_refused_by_the_engine() -> None:
    opened = {"type": "ChannelOpened", "tick": 0, "boot_bytes": 4096, "maxmem_bytes": 4096, "uuid": UUID}
    assert input_from_dict(opened).uuid == UUID  # type: ignore[union-attr]
    for bad in (UUID.upper(), "not-a-uuid", "00000000-0000-0000-0000-000000000000"):
        with pytest.raises(RecordError, match="uuid"):
            input_from_dict({**opened, "uuid": bad})


async def test_hello_uuid_reaches_the_metrics_and_a_bad_one_is_refused_and_counted(
    service: EmbeddedService, tmp_path: Path
) -> None:
    sock = str(tmp_path / "gw.sock")
    gateway = GatewayServer(EmbeddedBackend(service))
    await gateway.start(unix_path=sock)
    labels = MetricsLabels(host="h1", uuids={"vm3": OTHER})  # --metrics-uuid-file: wins for vm3
    served = serve_for_service(service, "127.0.0.1", 0, labels=labels, gateway=gateway)
    links: list[GuestLink] = []
    try:
        # A malformed UUID: refused with a clear error, counted, nothing recorded for the VM.
        reader, writer = await asyncio.open_unix_connection(sock)
        writer.write(hello_line("vm9", uuid="6b29fc40-ca47-1067-b31d"))
        await writer.drain()
        answer = json.loads(await reader.readline())
        writer.close()
        assert answer["ok"] is False and answer["reason"] == "hello_invalid"
        assert "uuid must be a UUID in canonical form" in answer["error"]
        assert service.log.inbox_high_watermark() == 0 or "vm9" not in service.log.vms()

        for vm, uuid in (("vm1", UUID.upper()), ("vm2", None), ("vm3", UUID)):
            raw = hello_line(vm, **({"uuid": uuid} if uuid else {}))
            link = GuestLink(EchoGuest(), parse_hello(raw), service.now_seconds)
            await link.open(unix_path=sock)
            links.append(link)
        await wait_for(lambda: all(vm in service.runner.states for vm in ("vm1", "vm2", "vm3")))
        assert [e.uuid for e in identified(service, "vm1")] == [UUID]
        assert [e.source for e in identified(service, "vm1")] == ["hello"]
        assert identified(service, "vm2") == []

        text = await asyncio.to_thread(scrape, served.url)
        assert uuid_labels(text) == {"vm1": UUID, "vm2": None, "vm3": OTHER}
        assert hello_rejected(text)["bad_uuid"] == 1

        # Reconnecting with the same UUID records nothing new; a new one is recorded again.
        await links[0].stop()
        await wait_for(lambda: "vm1" not in gateway.connections)
        link = GuestLink(EchoGuest(), parse_hello(hello_line("vm1", uuid=UUID)), service.now_seconds)
        await link.open(unix_path=sock)
        links[0] = link
        await wait_for(lambda: "vm1" in gateway.connections)
        await asyncio.sleep(0.2)
        assert len(identified(service, "vm1")) == 1
    finally:
        for link in links:
            await link.stop()
        served.close()
        await gateway.close()
    # A restart rebuilds the UUID from the log (snapshot or events), not from memory.
    service.runner.recover()
    assert service.runner.states["vm1"].uuid == UUID and service.runner.states["vm2"].uuid is None
    # And an audit replays the log, VmIdentified included, byte for byte (exit 3: the live
    # service's ticker keeps appending, so the inbox runs ahead of what is consumed).
    audit = await asyncio.to_thread(hvdm, "audit", "--db", str(tmp_path / "hvdm.db"), "--json")
    assert audit.returncode in (0, 3), audit.stderr
    assert json.loads(audit.stdout)["replay_matches"] is True


# ---------------------------------------------------------------------------------------- QEMU
@pytest.fixture
async def sockets(tmp_path: Path) -> AsyncIterator[Callable[..., SimulatedQemu]]:
    sims: list[SimulatedQemu] = []

    def make(file: str, **kw: Any) -> SimulatedQemu:
        sim = SimulatedQemu(str(tmp_path / f"{file}.sock"), **kw)
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        await sim.kill()


async def test_qemu_query_uuid_reaches_the_metrics_and_a_bad_answer_is_not_a_label(
    service: EmbeddedService, sockets: Callable[..., SimulatedQemu], caplog: pytest.LogCaptureFixture
) -> None:
    sims = [
        sockets("with", name="with", uuid=UUID.upper()),
        sockets("nil", name="nil"),  # QEMU without -uuid answers the nil UUID
        sockets("bad", name="bad", uuid="6b29fc40-ca47-1067-b31d-00dd010662da; rm -rf /"),
        sockets("odd", name="odd", uuid=12345),
    ]
    for sim in sims:
        await sim.start()
    agent = await attach_to_service(service, [s.path for s in sims], poll_seconds=0.05)
    served = serve_for_service(service, "127.0.0.1", 0, labels=MetricsLabels(host="h1"))
    try:
        await wait_for(lambda: all(s.name in service.runner.states for s in sims), timeout=10)
        assert all("query-uuid" in s.commands for s in sims)
        text = await asyncio.to_thread(scrape, served.url)
        assert uuid_labels(text) == {"with": UUID, "nil": None, "bad": None, "odd": None}
        assert [(e.uuid, e.source) for e in identified(service, "with")] == [(UUID, "qemu")]
        assert not any(identified(service, vm) for vm in ("nil", "bad", "odd"))
        warned = [r.getMessage() for r in caplog.records if "query-uuid" in r.getMessage()]
        assert len(warned) == 2, warned
    finally:
        served.close()
        await agent.close()
