"""The HMP text parser shared by human-monitor-command and hvdm ctl."""

from __future__ import annotations

import pytest

from services.qmp import hmp


@pytest.mark.parametrize(
    ("line", "command", "args"),
    [
        ("balloon 1024", "balloon", {"value": 1024 << 20}),
        ("balloon 2G", "balloon", {"value": 2 << 30}),
        ("info balloon", "query-balloon", {}),
        ("info memory-devices", "query-memory-devices", {}),
        ("info hv-balloon-status-report", "query-hv-balloon-status-report", {}),
        (
            "object_add memory-backend-ram,id=mem1,size=200G",
            "object-add",
            {"qom-type": "memory-backend-ram", "id": "mem1", "size": 200 << 30},
        ),
        (
            "object_add qom-type=memory-backend-ram,id=m,size=1.5G",
            "object-add",
            {"qom-type": "memory-backend-ram", "id": "m", "size": 3 << 29},
        ),
        ("object_del mem1", "object-del", {"id": "mem1"}),
        ("hv-balloon-add-memory id=mem1", "hv-balloon-add-memory", {"id": "mem1"}),
        ("hv_balloon_add_memory mem1", "hv-balloon-add-memory", {"id": "mem1"}),
        ("  balloon   512  ", "balloon", {"value": 512 << 20}),
    ],
)
def test_lines_become_qmp_commands(line: str, command: str, args: dict[str, object]) -> None:
    parsed = hmp.parse_line(line)
    assert parsed.qmp_command == command
    assert parsed.arguments == args


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("frob", "unknown command: 'frob'"),
        ("balloon", "balloon: missing or extra arguments (usage: balloon target-MiB)"),
        ("balloon lots", "invalid size 'lots'"),
        ("info", "info: unknown or missing item"),
        ("info registers", "info: unknown or missing item"),
        ("object_add memory-backend-ram,id=a,id=b", "Parameter 'id' appears more than once"),
        ("object_add memory-backend-ram,size=1X", "invalid size '1X'"),
        ("object_add a,b", "Expected '=' after parameter 'b'"),
        ("object_add id=x", "Parameter 'qom-type' is missing"),
        ("object_del", "object_del: usage: object_del ID"),
        ("hv-balloon-add-memory id=", "hv-balloon-add-memory: missing backend id"),
        ("balloon 99999999999E", "too large"),
        ("object_add memory-backend-ram,id=m,size=1.5", "a fraction needs a unit suffix"),
    ],
)
def test_bad_lines_say_what_hmp_would(line: str, message: str) -> None:
    with pytest.raises(hmp.HmpError) as info:
        hmp.parse_line(line)
    assert message in str(info.value)


def test_help_and_empty_lines_are_answered_locally() -> None:
    assert hmp.parse_line("").qmp_command is None
    help_ = hmp.parse_line("help")
    assert help_.qmp_command is None and "balloon target" in help_.text


def test_renderers_print_like_qemu() -> None:
    assert hmp.render_balloon({"actual": 3 << 30}) == "balloon: actual=3072\n"
    assert hmp.render_status({"status": "running", "running": True}) == "VM status: running\n"
    assert hmp.render_version({"qemu": {"major": 10, "minor": 0, "micro": 0}, "package": "hvdm"}) == "10.0.0 (hvdm)\n"
    assert hmp.render_memory_devices([{"type": "hv-balloon", "data": {"id": "hvb", "max-size": 0}}]) == (
        'Memory device [hv-balloon]: "hvb"\n  max-size: 0\n'
    )
    assert hmp.render_status_report({"committed": 1 << 30, "available": 2 << 30}) == (
        "committed: 1024 MiB, available: 2048 MiB\n"
    )
