"""A sans-IO simulated Hyper-V Dynamic Memory guest (Linux hv_balloon by default).

    from . import SimulatedGuest, GuestConfig, PROFILES, WORKLOADS

    g = SimulatedGuest(GuestConfig(boot_bytes=4 << 30, profile="linux", workload="steady", seed=1))
    out = g.connect(now=0.0)           # [VERSION_REQUEST 2.0]
    out = g.receive(host_bytes, now)   # one host->guest DM message -> guest->host messages
    out = g.poll(now)                  # time passes: status reports, delayed work
    g.snapshot()                       # the guest's own view (pages, state, violations seen)

The behaviour follows /work/shared/spec/guest-behaviour.md; see ``guest.py`` for the design.
"""

from .config import GuestConfig
from .guest import SimulatedGuest
from .memory import GuestMemory, balloon_floor
from .misbehaviour import MALFORMED_VARIANTS, WRONG_STATE_VARIANTS
from .profiles import MISBEHAVIOUR_MODES, PROFILES
from .workload import WORKLOADS

__all__ = [
    "MALFORMED_VARIANTS",
    "MISBEHAVIOUR_MODES",
    "PROFILES",
    "WORKLOADS",
    "WRONG_STATE_VARIANTS",
    "GuestConfig",
    "GuestMemory",
    "SimulatedGuest",
    "balloon_floor",
]
