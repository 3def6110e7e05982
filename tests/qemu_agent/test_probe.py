"""Discovery from QMP answers, including answers no QEMU sends."""

from __future__ import annotations

import doctest

import pytest

from services.qemu_agent import address, probe


def test_doctests() -> None:
    for module in (probe, address):
        assert doctest.testmod(module).failed == 0


def test_real_answers_from_the_kit() -> None:
    # Debian QEMU 7.2 with -device virtio-balloon-pci,id=balloon0 (observed with the realguest kit).
    listing = {
        "/machine/peripheral": [
            {"name": "type", "type": "string"},
            {"name": "balloon0", "type": "child<virtio-balloon-pci>"},
        ],
        "/machine/peripheral-anon": [{"name": "type", "type": "string"}],
    }
    assert probe.balloon_device(listing) == ("virtio-balloon", "/machine/peripheral/balloon0")
    assert probe.memory_sizes({"base-memory": 2 << 30, "plugged-memory": 0}, []) == (2 << 30, 2 << 30)
    assert probe.version_text({"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}) == "7.2.22"
    stats = {
        "stats": {"stat-available-memory": 1948917760, "stat-total-memory": 2062491648, "stat-free-memory": 1},
        "last-update": 1796485383,
    }
    assert probe.virtio_status(stats) == (1948917760, 2062491648 - 1948917760)


@pytest.mark.parametrize(
    "summary",
    [None, [], {"base-memory": -1}, {"base-memory": "2G"}, {"base-memory": 1 << 60}, {"base-memory": 0}, {}],
)
def test_bad_memory_summaries_are_refused(summary: object) -> None:
    with pytest.raises(probe.ProbeError):
        probe.memory_sizes(summary, [])


@pytest.mark.parametrize("answer", [None, {}, {"actual": -1}, {"actual": 1.5}, {"actual": True}, {"actual": 1 << 62}])
def test_bad_actuals_are_refused(answer: object) -> None:
    with pytest.raises(probe.ProbeError):
        probe.actual_of(answer)


def test_unset_virtio_stats_mean_no_status() -> None:
    unset = {"stats": {"stat-available-memory": (1 << 64) - 1, "stat-total-memory": 5}, "last-update": 9}
    assert probe.virtio_status(unset) is None
    with pytest.raises(probe.ProbeError):
        probe.virtio_status({"stats": {"stat-available-memory": -7, "stat-total-memory": 5}, "last-update": 9})


def test_vm_ids_are_made_safe() -> None:
    assert probe.vm_id_for({"name": "../../etc"}, "/x.sock") == "etc"
    assert probe.vm_id_for({"name": 5}, "/run/a b.sock") == "a-b"
    assert probe.VM_ID.match(probe.vm_id_for({}, "/run/....sock"))
    with pytest.raises(ValueError):
        address.parse_address("tcp:host")
    with pytest.raises(ValueError):
        address.parse_address("tcp:host:99999")
