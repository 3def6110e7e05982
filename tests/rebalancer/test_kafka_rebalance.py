"""Issue 15's "done when": the rebalancer on the distributed deployment, on a real tansu broker.

Two gateways (hosts ``h1`` and ``h2``) in this process, two ``hvdm engine --broker`` workers and
two ``hvdm rebalance --broker`` instances as child processes, simulated Linux guests on both
hosts. ``h1`` holds three busy guests on 1 GiB of capacity (from the rebalancer's
``--host-capacity h1=1G``): more than they need even at their floors, so it is oversubscribed;
``h2`` says its own capacity through its gateway (6 GiB) and holds two idle guests. The test
shows: decisions written by the rebalancer reach guests on both hosts (they balloon), a migration
recommendation from h1 to h2 (JSON line and rebalancer-topic record), and the fail-over of the
rebalancer when the active instance is killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from services.embedded.clock import TickClock
from services.guest_sim import GuestConfig, SimulatedGuest
from services.kafka_engine.deployment_config import engine_config_of
from services.kafka_engine.gateway import start_gateway, stop_gateway
from services.kafka_engine.kafka_log import GroupOffsets, PartitionReader, ensure_topics
from services.kafka_engine.projection import EventsProjection
from services.kafka_engine.settings import KafkaSettings
from services.kafka_engine.tansu import LocalBroker, free_port
from services.rebalancer.kafka_hosts import HostDirectory, HostSpec
from services.rebalancer.kafka_live import read_recommendations
from services.vmbus_gateway.client import GuestLink
from services.vmbus_gateway.hello import Hello
from tests.kafka.harness import Engines

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30
SPEED = 10.0
#: host -> [(vm, workload)]
GUESTS = {"h1": [("vm1", "steady"), ("vm2", "steady"), ("vm3", "steady")], "h2": [("vm4", "idle"), ("vm5", "idle")]}


class Rebalancer:
    """One ``hvdm rebalance --broker --json`` child; its stdout lines are read from a file."""

    def __init__(self, url: str, name: str, workdir: Path) -> None:
        self.name = name
        self.metrics_port = free_port()
        self.out = workdir / f"rebalance-{name}.jsonl"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services",
                "rebalance",
                "--broker",
                url,
                "--policy",
                "hvdm",
                "--interval",
                "0.5",
                "--host-capacity",
                "h1=1G",
                "--instance",
                name,
                "--metrics-port",
                str(self.metrics_port),
                "--json",
            ],
            cwd=ROOT,
            stdout=open(self.out, "wb"),  # noqa: SIM115 - owned by the child
            stderr=open(workdir / f"rebalance-{name}.log", "wb"),  # noqa: SIM115
        )

    def lines(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def active(self) -> bool:
        leases = [line for line in self.lines() if line.get("type") == "lease"]
        return bool(leases) and bool(leases[-1]["active"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


async def wait_for(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.25)


async def scenario(broker: LocalBroker, prefix: str, workdir: Path) -> None:
    settings = KafkaSettings.from_url(
        f"{broker.url}?prefix={prefix}&partitions=4&speed={SPEED}"
        "&session_timeout=3&heartbeat=0.5&rebalance_timeout=3&commit_interval=0.05"
    )
    counts = await asyncio.to_thread(ensure_topics, settings)
    config = await asyncio.to_thread(engine_config_of, settings)
    clock = TickClock(tick_seconds=config.tick_seconds, speed=SPEED)
    engines = Engines(settings.url, workdir)
    rebalancers: list[Rebalancer] = []
    gateways: list[Any] = []
    links: list[GuestLink] = []
    reader = PartitionReader(settings)
    group = GroupOffsets(settings)
    projection = EventsProjection(settings, counts[settings.inbox])
    hosts = HostDirectory(settings)
    try:
        engines.start(2)
        await wait_for(
            "the engine workers", lambda: min(group.committed(counts[settings.inbox]).values()) > 0, timeout=60
        )
        for name, capacity in (("h1", None), ("h2", 6 * GIB)):
            gateways.append(
                await start_gateway(
                    settings,
                    unix_path=str(workdir / f"{name}.sock"),
                    tcp=None,
                    backend=HostSpec(name, capacity_bytes=capacity).backend(settings),
                )
            )
        for name, members in GUESTS.items():
            for i, (vm, workload) in enumerate(members):
                guest = SimulatedGuest(GuestConfig(boot_bytes=GIB, workload=workload, seed=i))
                link = GuestLink(guest, Hello(vm=vm, boot_bytes=GIB, maxmem_bytes=2 * GIB), clock.now_seconds)
                await link.open(unix_path=str(workdir / f"{name}.sock"))
                links.append(link)

        def placed() -> bool:
            hosts.catch_up(reader)
            return len(hosts.host_of) == 5

        await wait_for("the hosts topic", placed, timeout=20)
        assert hosts.host_of == {vm: host for host, members in GUESTS.items() for vm, _ in members}
        assert hosts.capacity["h2"] == 6 * GIB and hosts.capacity["h1"] > 0  # h1: this machine's RAM - 2 GiB

        rebalancers.append(Rebalancer(settings.url, "rbA", workdir))
        await wait_for("rbA to take the lease", rebalancers[0].active, timeout=30)
        rebalancers.append(Rebalancer(settings.url, "rbB", workdir))

        # Decisions reach guests on both hosts: the engine balloons them (events topic).
        def ballooned_on_both() -> bool:
            projection.catch_up(reader)
            shrunk = {vm for vm, s in projection.states.items() if s.ballooned_pages > 0}
            return all(any(vm in shrunk for vm, _ in members) for members in GUESTS.values())

        await wait_for("balloons on both hosts", ballooned_on_both, timeout=45)
        written = [line for r in rebalancers for line in r.lines() if line.get("type") == "set_target"]
        assert {line["host"] for line in written} == {"h1", "h2"}

        # The oversubscribed host: a recommendation to move a VM of h1 to h2.
        def recommended() -> bool:
            return any(line.get("type") == "migration" for r in rebalancers for line in r.lines())

        await wait_for("a migration recommendation", recommended, timeout=30)
        migration = next(line for r in rebalancers for line in r.lines() if line.get("type") == "migration")
        assert migration["from_host"] == "h1" and migration["to_host"] == "h2"
        assert migration["vm"] in {vm for vm, _ in GUESTS["h1"]}
        assert migration["expected_pressure_saved_bytes"] > 0 and "more than its capacity" in migration["reason"]
        records = await asyncio.to_thread(read_recommendations, settings)
        assert any(r["vm"] == migration["vm"] and r["to_host"] == "h2" for r in records)
        recommender = next(r for r in rebalancers if any(x.get("type") == "migration" for x in r.lines()))
        metrics = await asyncio.to_thread(recommender.scrape)
        assert 'hvdm_rebalancer_migration_recommendations_total{from_host="h1",to_host="h2"}' in metrics
        assert f'hvdm_rebalancer_active{{instance="{recommender.name}"}} 1.0' in metrics

        # Fail-over: kill the active instance; the other takes the lease and decides again.
        await wait_for("rbB to join as standby", lambda: any(r.lines() for r in rebalancers[1:]), timeout=30)
        active = [r for r in rebalancers if r.active()]
        assert len(active) == 1, "exactly one instance holds the lease"
        victim = active[0]
        survivor = next(r for r in rebalancers if r is not victim)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        killed_at = len(survivor.lines())
        await wait_for("the survivor to take over", survivor.active, timeout=30)

        def survivor_recommends() -> bool:
            return any(line.get("type") == "migration" for line in survivor.lines()[killed_at:])

        await wait_for("the survivor's own recommendation", survivor_recommends, timeout=20)

        # The audit of the deployment shows the hosts, both claims of the lease and the recommendations.
        audit = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services", "audit", "--broker", settings.url, "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert audit.returncode in (0, 2, 3), audit.stderr  # 2 diverged, 3 behind: other tests' business
        section = json.loads(audit.stdout)["rebalancer"]
        assert section["hosts"]["h2"]["vms"] == ["vm4", "vm5"] and section["hosts"]["h2"]["capacity_bytes"] == 6 * GIB
        claims = [c["instance"] for c in section["lease_claims"]]
        assert claims[-1] == survivor.name and set(claims[:-1]) == {victim.name}  # (a group rebalance may re-claim)
        assert {m["instance"] for m in section["migration_recommendations"]} == {victim.name, survivor.name}
    finally:
        for r in rebalancers:
            r.stop()
        for link in links:
            await link.stop()
        for server, backend in gateways:
            await stop_gateway(server, backend)
        engines.stop_all()
        reader.close()
        group.close()


def test_rebalancer_on_kafka_two_hosts_failover_and_migration(broker: LocalBroker, prefix: str, tmp_path: Path) -> None:
    started = time.monotonic()
    asyncio.run(scenario(broker, prefix, tmp_path))
    assert time.monotonic() - started < 120
