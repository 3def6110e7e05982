"""Guest profiles: which guest the simulator pretends to be.

Why profiles are data, not subclasses: every profile shares the same protocol machine
(``guest.py``); they differ only in a handful of facts (status delay and cadence, whether ranges
are coalesced, whether hot-remove is advertised) and in which misbehaviours they inject. Keeping
those facts in one frozen record makes the differences reviewable in one screen.

``linux`` follows guest-behaviour.md (upstream ``hv_balloon``) and is the default. ``windows``
follows what the spec and references.md 1.3 say about Windows guests; where nothing is published
the choice is marked as ours. The malicious profiles are Linux guests with one misbehaviour each
(``malicious`` cycles through all of them) so that a host can be tested against every violation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

#: Every misbehaviour a malicious profile can inject, in the order ``malicious`` cycles through them.
MISBEHAVIOUR_MODES: Final = (
    "not_owned",
    "double_free",
    "beyond_request",
    "malformed",
    "wrong_state",
    "silent",
    "status_flood",
)


@dataclass(frozen=True, slots=True)
class Profile:
    """The facts that distinguish one simulated guest from another.

    ``status_delay_calls``: swallowed status calls before the first report (Linux
    ``pressure_report_delay`` = 45, guest-behaviour.md 3). ``status_period_jiffies`` /
    ``status_min_gap_jiffies``: the status thread's period and the minimum distance between two
    reports (Linux: woken every 1 s + jitter against a strict ``> HZ`` test, modelled as HZ + 1).
    """

    name: str
    description: str
    flavour: Literal["linux", "windows"]
    misbehaviours: tuple[str, ...] = ()
    #: The VM offers ACPI S4 (hibernation): Linux then ignores balloon requests (section 4).
    hibernation_capable: bool = False

    @property
    def is_windows(self) -> bool:
        return self.flavour == "windows"

    @property
    def status_delay_calls(self) -> int:
        return 0 if self.is_windows else 45

    def status_period_jiffies(self, hz: int) -> int:
        return hz if self.is_windows else hz + 1

    def status_min_gap_jiffies(self, hz: int) -> int:
        return hz if self.is_windows else hz + 1

    @property
    def honours_suppress_pressure_reports(self) -> bool:
        """Linux reads bit 0 of the caps response only (guest-behaviour.md 2.3)."""
        return self.is_windows

    @property
    def coalesces_ranges(self) -> bool:
        """Linux never merges ranges (section 4); the Windows profile does."""
        return self.is_windows

    @property
    def supports_hot_remove(self) -> bool:
        """Caps bit 6; only the protocol-2.0 extension knows it (section 1.3, section 8)."""
        return self.is_windows


_SPECS: Final = (
    Profile("linux", "Upstream Linux hv_balloon (guest-behaviour.md), x86-64, the default", "linux"),
    Profile(
        "windows",
        "Windows-like: status at 1 Hz right after caps, honours suppress_pressure_reports, 2 MiB "
        "balloon units returned coalesced, advertises and answers hot-remove (hot-added memory first)",
        "windows",
    ),
    Profile(
        "linux_hibernate",
        "Linux in a VM that can hibernate (ACPI S4): ignores balloon and unballoon requests without "
        "an answer, answers hot-add with nothing added, keeps reporting status (honest, not malicious)",
        "linux",
        hibernation_capable=True,
    ),
    Profile(
        "not_owned",
        "Linux, but every balloon transaction also returns pages it does not own (beyond RAM)",
        "linux",
        ("not_owned",),
    ),
    Profile(
        "double_free",
        "Linux, but returns the same pages twice, within one message and across messages",
        "linux",
        ("double_free",),
    ),
    Profile(
        "beyond_request",
        "Linux, but balloons 512 pages more than asked (ignoring the floor) and over-reports hot-add",
        "linux",
        ("beyond_request",),
    ),
    Profile(
        "malformed",
        "Linux, but each transaction starts with a malformed message "
        "(truncated, oversized, wrong header size, bad range_count, in turn)",
        "linux",
        ("malformed",),
    ),
    Profile(
        "wrong_state",
        "Linux, but sends responses nobody asked for and a version request after negotiation",
        "linux",
        ("wrong_state",),
    ),
    Profile("silent", "Linux that never answers balloon, unballoon or hot-add requests", "linux", ("silent",)),
    Profile(
        "status_flood",
        "Linux that sends many status reports per second from the end of the handshake",
        "linux",
        ("status_flood",),
    ),
    Profile(
        "malicious",
        "Linux that cycles through every misbehaviour above, one per host transaction",
        "linux",
        MISBEHAVIOUR_MODES,
    ),
)

#: Profile name -> the full record.
PROFILE_SPECS: Final[Mapping[str, Profile]] = MappingProxyType({p.name: p for p in _SPECS})

#: Profile name -> one-line description (the public list, e.g. for ``hvdm guest --profile``).
PROFILES: Final[Mapping[str, str]] = MappingProxyType({p.name: p.description for p in _SPECS})


def get_profile(name: str) -> Profile:
    """The profile called ``name``; a ValueError for an unknown name (a configuration error)."""
    try:
        return PROFILE_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown guest profile {name!r}; known: {', '.join(PROFILE_SPECS)}") from None
