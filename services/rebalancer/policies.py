"""The policy registry: names on the command line and in reports -> policy factories."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

from .forecast import HvdmPolicy
from .hyperv import HyperVPolicy
from .mom import MomPolicy
from .oracle import OraclePolicy
from .policy import Policy

#: Report order: the two references first, ours, then the yardstick.
POLICIES: Final[Mapping[str, Callable[[Mapping[str, str]], Policy]]] = MappingProxyType(
    {
        "hyperv": HyperVPolicy.from_strings,
        "mom": MomPolicy.from_strings,
        "hvdm": HvdmPolicy.from_strings,
        "oracle": OraclePolicy.from_strings,
    }
)
#: Policies that need the simulation (the oracle reads the future traces).
SIMULATION_ONLY: Final = frozenset({"oracle"})
LIVE_POLICIES: Final = tuple(name for name in POLICIES if name not in SIMULATION_ONLY)


def make_policy(name: str, params: Mapping[str, str] | None = None) -> Policy:
    """A fresh policy called ``name``; ValueError for an unknown name or parameter."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}") from None
    return factory(params or {})
