"""The hv-balloon trace parser against a real QEMU 10 trace (the realguest kit's example, copied)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.qemu_agent.trace import TraceInterpreter
from services.qemu_agent.trace_follow import follow_trace
from services.range_store import PageRangeSet

DATA = Path(__file__).parent / "data" / "example-trace-basic.log"


def replay(lines: list[str]) -> tuple[TraceInterpreter, PageRangeSet, PageRangeSet]:
    interp = TraceInterpreter()
    ballooned, hot_added = PageRangeSet(), PageRangeSet()
    peak = 0
    for line in lines:
        change = interp.feed(line)
        if change is None:
            continue
        if change.op == "ballooned":
            ballooned.add_many(change.ranges)
        elif change.op == "unballooned":
            ballooned.remove_many(change.ranges)
        elif change.op == "hot_added":
            hot_added.add_many(change.ranges)
        else:
            ballooned.clear()
            hot_added.clear()
        peak = max(peak, ballooned.page_count)
    assert peak >= 0
    return interp, ballooned, hot_added


def test_the_example_balloons_512_mib_exactly_and_gives_it_back() -> None:
    lines = DATA.read_text().splitlines()
    interp = TraceInterpreter()
    ballooned = PageRangeSet()
    sizes = []
    for line in lines:
        change = interp.feed(line)
        if change is not None and change.op == "ballooned":
            ballooned.add_many(change.ranges)
            sizes.append(ballooned.page_count)
        elif change is not None and change.op == "unballooned":
            ballooned.remove_many(change.ranges)
            sizes.append(ballooned.page_count)
    # 131072 pages (512 MiB) in two merged runs (the _remainder lines are not counted twice),
    # then handed back in two unballoon posts.
    assert sizes == [95744, 131072, 95744, 0]
    assert interp.states[:7] == [
        "S_POST_RESET_CLOSED",
        "S_VERSION",
        "S_CAPS",
        "S_POST_INIT_WAIT",
        "S_IDLE",
        "S_BALLOON_RB_WAIT",
        "S_BALLOON_POSTING",
    ]
    assert interp.lines == len(lines) == interp.used + interp.ignored


def test_unknown_and_broken_lines_are_ignored() -> None:
    lines = [
        "garbage",
        "",
        "134@1.0:vmbus_something else",
        "134@1.0:hv_balloon_remove_response processing remove response range 0 @ 0x10, both 1",  # empty run
        "134@1.0:hv_balloon_remove_response processing remove response range 99999999999999 @ 0xffffffffff, both 1",
        "134@1.0:hv_balloon_remove_response processing remove response range 5 @ 0x10, both 0",
        "\x00\xff" * 40,
    ]
    interp, ballooned, _ = replay(lines)
    assert ballooned.to_list() == [(0x10, 5)]
    assert interp.ignored == 6 and interp.used == 1


def test_hot_add_counts_only_what_the_guest_accepted_and_reset_forgets() -> None:
    lines = [
        "1@1.0:hv_balloon_our_range_add adding our range 524288 @ 0x800000",
        "1@1.0:hv_balloon_outgoing_hot_add posting hot add 3 for 524288 @ 0x800000",
        "1@1.1:hv_balloon_incoming_hot_add incoming hot add response 3, result 1, count 262144",
        "1@1.2:hv_balloon_outgoing_hot_add posting hot add 4 for 8 @ 0x900000",
        "1@1.3:hv_balloon_incoming_hot_add incoming hot add response 4, result 0, count 0",
    ]
    _, _, hot_added = replay(lines)
    assert hot_added.to_list() == [(0x800000, 262144)]
    _, _, after_reset = replay([*lines, "1@2.0:hv_balloon_state_change -> S_POST_RESET_CLOSED"])
    assert after_reset.page_count == 0


async def test_follow_reads_a_growing_file_and_a_truncated_one(tmp_path: Path) -> None:
    path = tmp_path / "trace.log"
    text = DATA.read_text()
    head, tail = text[:1500], text[1500:]
    path.write_text(head)
    got: list[str] = []

    async def consume() -> None:
        async for change in follow_trace(path, 0.01):
            got.append(change.op)
            if len(got) >= 6:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.1)
    with path.open("a") as f:
        f.write(tail)
    await asyncio.sleep(0.1)
    # A new QEMU truncates the file (-D opens it for writing): read from its start again.
    path.write_text("1@1.0:hv_balloon_state_change -> S_POST_RESET_CLOSED\n")
    await asyncio.wait_for(task, 5)
    assert got[:5] == ["reset", "ballooned", "ballooned", "unballooned", "unballooned"]
    assert got[5] == "reset"
