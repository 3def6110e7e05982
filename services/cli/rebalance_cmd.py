"""``hvdm rebalance``: resize VMs from the fleet view (live), or compare policies (simulation).

Live, on an embedded log (the service keeps running; this is a separate process)::

    $ hvdm rebalance --db /var/lib/hvdm/log.db --policy hvdm --interval 5 --host-capacity 256G
    $ hvdm rebalance --db log.db --policy hyperv --param buffer=0.3 --once --json

Live on the Kafka deployment (any number of instances; one holds the lease and decides)::

    $ hvdm rebalance --broker kafka://10.0.0.5:9092 --policy hvdm --host-capacity h1=200G --json

Simulation (no log, no guests: the light model of ``services.rebalancer.model``)::

    $ hvdm rebalance --simulate --vms 1000 --hours 8 --policy all --json --plot fleet.png
    $ hvdm rebalance --simulate --vms 150 --hours 2 --host-capacity 128G --hot-host leak --migrate

Exit status: 0, or 1 on errors (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

from ..rebalancer.policies import LIVE_POLICIES, POLICIES, SIMULATION_ONLY, make_policy
from .arg_types import BROKER, OUTPUT_PATH, PORT, POSITIVE, SEED, FloatArg, IntArg, SizeArg

EXIT_OK = 0
EXIT_ERROR = 1


def _fail(message: object) -> int:
    print(f"hvdm: rebalance error: {message}".replace("\n", " "), file=sys.stderr)
    return EXIT_ERROR


def _params(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param wants NAME=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _progress_printer(enabled: bool) -> Any:
    if not enabled:
        return None

    def show(fraction: float) -> None:
        width = 30
        done = int(fraction * width)
        print(f"\rsimulating [{'#' * done}{'.' * (width - done)}] {fraction:6.1%}", end="", file=sys.stderr, flush=True)
        if fraction >= 1.0:
            print(file=sys.stderr)

    return show


def _simulate(args: argparse.Namespace) -> int:
    from ..rebalancer.simulation import SimConfig, simulate

    names = list(POLICIES) if args.policy == "all" else [args.policy]
    params = _params(args.param)
    try:
        # Parameters go to the single policy named; with "all" they must fit every policy.
        policies = [make_policy(n, params) for n in names]
        config = SimConfig(
            vms=args.vms,
            hours=args.hours,
            seed=args.seed,
            host_capacity_bytes=_one_capacity(args) or SimConfig().host_capacity_bytes,
            interval_s=int(args.interval or SimConfig().interval_s),
            hot_host_workload=args.hot_host,
            migrate=args.migrate,
        )
    except ValueError as exc:
        return _fail(exc)
    show = args.progress or (sys.stderr.isatty() and not args.json)
    result = simulate(config, policies, progress=_progress_printer(show))
    doc = result.to_dict()
    if args.report:
        Path(args.report).write_text(json.dumps(doc, indent=2) + "\n")
    if args.plot:
        from ..rebalancer.plot import write_plot

        try:
            write_plot(args.plot, result.series(), doc["fleet"])
        except ImportError as exc:
            return _fail(f"--plot needs matplotlib ({exc})")
    print(json.dumps(doc) if args.json else _sim_text(doc))
    return EXIT_OK


def _sim_text(doc: dict[str, Any]) -> str:
    fleet = doc["fleet"]
    oracle = "oracle" in doc["policies"]
    lines = [
        f"{fleet['vms']} VMs on {fleet['hosts']} hosts of {fleet['host_capacity_bytes'] / 2**30:g} GiB, "
        f"{doc['config']['hours']:g} h simulated in {doc['wall_seconds']:.1f} s "
        f"(static allocation at max: {fleet['static_max_bytes'] / 2**30:,.0f} GiB)",
        "",
        f"{'POLICY':8} {'RECLAIMED':>9} {'PRESSURE VM-MIN':>15} {'OPERATIONS':>10} {'OVERCOMMIT EVENTS':>17}"
        + (f" {'RECLAIM/ORACLE':>14} {'PRESSURE/ORACLE':>15}" if oracle else ""),
    ]
    for name, p in doc["policies"].items():
        line = (
            f"{name:8} {p['reclaimed_ratio']:>9.1%} {p['pressure_vm_minutes']:>15,.1f} "
            f"{p['operations']:>10,} {p['overcommit_events']:>17,}"
        )
        if oracle:
            line += f" {_fraction(p['reclaimed_fraction_of_oracle']):>14} {_pressure_vs_oracle(p):>15}"
        lines.append(line)
    if fleet["hosts"] > 1:
        verb = "applied" if doc["config"]["migrate"] else "recommended (not applied; --migrate applies them)"
        lines += ["", f"migrations {verb}:"]
        for name, p in doc["policies"].items():
            lines.append(
                f"  {name:8} {p['migration_recommendations']:>4} recommended, {p['migrations_applied']:>4} applied; "
                f"pressure VM-min by host {', '.join(f'{x:,.0f}' for x in p['pressure_vm_minutes_by_host'])}"
            )
    return "\n".join(lines)


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _pressure_vs_oracle(p: dict[str, Any]) -> str:
    """The oracle often has no pressure at all: then the excess in VM-minutes, not a fraction."""
    fraction = p["pressure_fraction_of_oracle"]
    if fraction is not None:
        return f"x{fraction:,.2f}"
    above = p["pressure_vm_minutes_above_oracle"]
    return "=" if above == 0 else f"+{above:,.1f} min"


def _live(args: argparse.Namespace) -> int:
    import sqlite3

    from ..audit.logfile import LogError, open_log
    from ..rebalancer.live import LiveRebalancer, TargetWritten
    from ..rebalancer.projection import LiveLimits

    if args.policy == "all":
        return _fail("live mode runs one policy; --policy all is for --simulate")
    if args.policy in SIMULATION_ONLY:
        return _fail(f"policy {args.policy} needs the future traces of --simulate; live: {', '.join(LIVE_POLICIES)}")
    try:
        policy = make_policy(args.policy, _params(args.param))
    except ValueError as exc:
        return _fail(exc)
    limits = LiveLimits(host_capacity_bytes=_one_capacity(args), min_bytes=args.min_size)

    def report(written: list[TargetWritten]) -> None:
        for w in written:
            if args.json:
                print(json.dumps({"policy": policy.name, **w.to_dict()}), flush=True)
            else:
                print(
                    f"vm={w.vm} target_bytes={w.target_bytes} previous={w.previous_target_bytes} "
                    f"current_bytes={w.current_bytes} demand_bytes={w.demand_bytes} pos={w.inbox_pos} tick={w.tick}",
                    flush=True,
                )

    try:
        with closing(open_log(args.db)) as log:
            loop = LiveRebalancer(log, policy, limits)
            rounds = 1 if args.once else args.rounds
            try:
                loop.run(args.interval or 5.0, rounds=rounds, on_round=report)
            except KeyboardInterrupt:
                return EXIT_OK
    except (LogError, sqlite3.Error) as exc:
        return _fail(exc)
    return EXIT_OK


def _one_capacity(args: argparse.Namespace) -> int | None:
    """The capacity of "the" host (simulation, embedded log): the last --host-capacity without a name."""
    unnamed = [size for name, size in args.host_capacity if name is None]
    return unnamed[-1] if unnamed else None


def _broker(args: argparse.Namespace) -> int:
    """``--broker``: standby until this instance holds the lease, then decide for every host."""
    from kafka.errors import KafkaError

    from ..kafka_engine.settings import KafkaSettings, SettingsError
    from ..rebalancer.kafka_live import KafkaRebalancer, Round
    from ..rebalancer.projection import LiveLimits

    if args.policy == "all":
        return _fail("live mode runs one policy; --policy all is for --simulate")
    if args.policy in SIMULATION_ONLY:
        return _fail(f"policy {args.policy} needs the future traces of --simulate; live: {', '.join(LIVE_POLICIES)}")
    try:
        settings = KafkaSettings.from_url(args.broker)
        policy = make_policy(args.policy, _params(args.param))
    except (SettingsError, ValueError) as exc:
        return _fail(exc)
    named = {name: size for name, size in args.host_capacity if name is not None}
    limits = LiveLimits(host_capacity_bytes=_one_capacity(args), min_bytes=args.min_size)
    metrics = None
    try:
        loop = KafkaRebalancer(settings, policy, limits, host_capacity=named, instance=args.instance)
    except (KafkaError, OSError, TimeoutError) as exc:
        return _fail(f"broker {settings.bootstrap}: {exc}")
    if args.metrics_port is not None:
        from ..rebalancer.rebalancer_metrics import serve_rebalancer_metrics

        metrics = serve_rebalancer_metrics(loop, args.metrics_host, args.metrics_port)
        print(f"hvdm rebalance: metrics on {metrics.url}", file=sys.stderr, flush=True)
    state: dict[str, bool | None] = {"active": None}  # the first round always says which it is

    def show(line: dict[str, Any], text: str) -> None:
        print(json.dumps(line, sort_keys=True) if args.json else text, flush=True)

    def report(r: Round) -> None:
        if r.active != state["active"]:
            state["active"] = r.active
            show(
                {"type": "lease", "instance": loop.instance, "active": r.active, "policy": policy.name},
                f"instance={loop.instance} {'active' if r.active else 'standby'} policy={policy.name}",
            )
        for w in r.written:
            show(
                {"policy": policy.name, **w.to_dict()},
                f"vm={w.vm} host={w.host} target_bytes={w.target_bytes} previous={w.previous_target_bytes} "
                f"current_bytes={w.current_bytes} demand_bytes={w.demand_bytes}",
            )
        for m in r.migrations:
            show(
                {"type": "migration", **m.to_dict()},
                f"migrate vm={m.vm} from={m.from_host} to={m.to_host} "
                f"saves={m.expected_pressure_saved_bytes} bytes: {m.reason}",
            )

    try:
        loop.run(args.interval or 5.0, rounds=1 if args.once else args.rounds, on_round=report)
    except KeyboardInterrupt:
        pass
    except (KafkaError, OSError, TimeoutError) as exc:
        return _fail(f"broker {settings.bootstrap}: {exc}")
    finally:
        if metrics is not None:
            metrics.stop()
        loop.close()
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    if args.simulate:
        return _simulate(args)
    if args.broker and args.db:
        return _fail("give --db PATH or --broker URL, not both")
    if args.broker:
        return _broker(args)
    if not args.db:
        return _fail("give --db PATH (live), --broker URL (live on Kafka) or --simulate")
    return _live(args)


def _capacity_arg(text: str) -> tuple[str | None, int]:
    """``SIZE`` (every host, or the only one) or ``NAME=SIZE`` (one host of the Kafka fleet)."""
    name, sep, size = text.rpartition("=")
    if sep and not name.strip():
        raise argparse.ArgumentTypeError(f"--host-capacity wants SIZE or NAME=SIZE, got {text!r}")
    return (name.strip() if sep else None), SizeArg(1)(size)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "rebalance",
        help="resize VMs from the fleet view (writes SetTarget inputs), or simulate the policies",
        description=(
            "Live: --db PATH or --broker URL, --policy NAME. "
            "Simulation: --simulate --vms N --hours H --policy NAME|all."
        ),
    )
    p.add_argument("--policy", default="hvdm", choices=[*POLICIES, "all"], help="policy (default hvdm)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="policy parameter (repeatable)")
    p.add_argument(
        "--interval",
        type=FloatArg(0.0, 86400.0, low_open=True),
        metavar="S",
        help="seconds between decisions (default 5)",
    )
    p.add_argument(
        "--host-capacity",
        type=_capacity_arg,
        action="append",
        default=[],
        metavar="[NAME=]SIZE",
        help="RAM a host gives to VMs (e.g. 256G; NAME=SIZE for one host with --broker; repeatable)",
    )
    p.add_argument("--json", action="store_true", help="JSON output")
    live = p.add_argument_group("live mode")
    live.add_argument("--db", metavar="PATH", help="the embedded SQLite log of a running service")
    live.add_argument(
        "--once", action="store_true", help="one decision round, then exit (--broker: once it holds the lease)"
    )
    live.add_argument("--rounds", type=POSITIVE, metavar="N", help="stop after N rounds")
    live.add_argument("--min-size", type=SizeArg(), default=512 << 20, metavar="SIZE", help="VM minimum (512M)")
    kafka = p.add_argument_group("live mode on Kafka")
    kafka.add_argument(
        "--broker", type=BROKER, metavar="URL", help="kafka://HOST:PORT[?prefix=...]: the distributed deployment"
    )
    kafka.add_argument("--instance", metavar="NAME", help="this instance's name in the lease (default host-pid-random)")
    kafka.add_argument("--metrics-port", type=PORT, metavar="PORT", help="serve hvdm_rebalancer_* metrics on PORT")
    kafka.add_argument("--metrics-host", default="127.0.0.1", metavar="ADDR", help="metrics address (127.0.0.1)")
    sim = p.add_argument_group("simulation")
    sim.add_argument("--simulate", action="store_true", help="run the fleet simulation instead of a live loop")
    sim.add_argument("--vms", type=IntArg(1, 1_000_000), default=100, help="fleet size (default 100)")
    sim.add_argument(
        "--hours", type=FloatArg(0.0, 10_000.0, low_open=True), default=2.0, help="simulated hours (default 2)"
    )
    sim.add_argument("--seed", type=SEED, default=1, help="fleet and trace seed (default 1)")
    sim.add_argument(
        "--plot", metavar="FILE.png", type=OUTPUT_PATH, help="write a PNG of fleet memory over time (matplotlib)"
    )
    sim.add_argument("--report", metavar="FILE.json", type=OUTPUT_PATH, help="also write the JSON report to this file")
    sim.add_argument("--progress", action="store_true", help="progress bar on stderr even when not a TTY")
    sim.add_argument("--hot-host", metavar="WORKLOAD", help="the first host's VMs all run WORKLOAD (e.g. leak)")
    sim.add_argument("--migrate", action="store_true", help="apply migration recommendations (the VM moves at once)")
    p.set_defaults(func=_run)
