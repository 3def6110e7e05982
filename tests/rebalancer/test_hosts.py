"""Hosts in the live fleet view, and the hosts-topic records a gateway writes (no broker needed)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from services.kafka_engine.settings import KafkaSettings
from services.rebalancer.kafka_hosts import HostDirectory, valid_host_name
from services.rebalancer.migration import recommend
from services.rebalancer.projection import UNKNOWN_HOST, LiveLimits, build_view
from tests.audit.cli import hvdm
from tests.rebalancer.live_fleet import build

GIB = 1 << 30


def test_vms_are_placed_on_their_hosts_with_each_hosts_capacity(tmp_path: Path) -> None:
    fleet = build(tmp_path / "live.db")
    view = build_view(
        fleet.runner.states.values(),
        LiveLimits(),
        now=10.0,
        host_of={"vm1": "h1", "vm2": "h2"},
        host_capacity={"h1": 4 * GIB, "h2": 8 * GIB},
    )
    assert view.host_names == (UNKNOWN_HOST, "h1", "h2")
    placed = {vm: view.host_names[int(h)] for vm, h in zip(view.vm_ids, view.host, strict=True)}
    assert placed == {"vm1": "h1", "vm2": "h2", "vm3": UNKNOWN_HOST}
    assert view.host_capacity.tolist()[1:] == [4 * GIB // 4096, 8 * GIB // 4096]
    # A VM whose host nobody has named is still re-targeted (as on one host of its own)...
    assert view.controllable.all()
    # ...but never moved, nor a destination: h1 is short, the unnamed host is the only one with room.
    short = dataclasses.replace(view, host_capacity=np.array([1 << 40, 1, 1], dtype=np.int64))
    assert recommend(short) == []


def test_host_records_are_validated() -> None:
    directory = HostDirectory(KafkaSettings())
    good = [
        {"kind": "host", "host": "h1", "capacity_bytes": 8 * GIB},
        {"kind": "vm", "vm": "vm1", "host": "h1"},
    ]
    bad = [
        b"not json",
        json.dumps([1, 2]).encode(),
        json.dumps({"kind": "vm", "vm": "vm2", "host": ""}).encode(),
        json.dumps({"kind": "vm", "vm": "vm2", "host": "x" * 300}).encode(),
        json.dumps({"kind": "host", "host": "h2", "capacity_bytes": -1}).encode(),
        json.dumps({"kind": "host", "host": "h2", "capacity_bytes": True}).encode(),
        json.dumps({"kind": "host", "host": "h2", "capacity_bytes": "8G"}).encode(),
        json.dumps({"kind": "vm", "vm": 7, "host": "h2"}).encode(),
        None,
    ]
    assert all(directory._fold(json.dumps(v).encode()) for v in good)
    assert not any(directory._fold(raw) for raw in bad)
    assert directory.host_of == {"vm1": "h1"} and directory.capacity == {"h1": 8 * GIB}
    assert not valid_host_name("?") and not valid_host_name(" h") and valid_host_name("node-7.example")


def test_broker_mode_argument_errors_are_one_line() -> None:
    both = hvdm("rebalance", "--db", "x.db", "--broker", "kafka://127.0.0.1:1")
    assert both.returncode == 1 and "not both" in both.stderr
    oracle = hvdm("rebalance", "--broker", "kafka://127.0.0.1:1", "--policy", "oracle")
    assert oracle.returncode == 1 and "needs the future traces" in oracle.stderr
    bad_url = hvdm("rebalance", "--broker", "http://nope")
    assert bad_url.returncode == 2 and "kafka://" in bad_url.stderr
    bad_capacity = hvdm("rebalance", "--broker", "kafka://127.0.0.1:1", "--host-capacity", "=5G")
    assert bad_capacity.returncode == 2
    gateway = hvdm("gateway", "--broker", "kafka://127.0.0.1:1", "--host-name", "")
    assert gateway.returncode == 1 and "--host-name" in gateway.stderr
