"""The per-VM host side of the Dynamic Memory protocol, as a pure event-sourced decider.

``decide`` turns one inbox input into events without touching state, ``evolve`` folds one event
into the state, ``advance`` is the IDLE handler that starts the next transaction, and ``process``
chains them the way the runners do. Nothing in this package performs I/O.
"""

from services.dm_engine.config import EngineConfig
from services.dm_engine.decider import advance, decide, evolve, initial_state, process
from services.dm_engine.events import Event, ViolationReason
from services.dm_engine.inputs import Input
from services.dm_engine.invariants import check_invariants
from services.dm_engine.outbox import outbox_messages
from services.dm_engine.state import ProtocolState, VmState

__all__ = [
    "EngineConfig",
    "Event",
    "Input",
    "ProtocolState",
    "ViolationReason",
    "VmState",
    "advance",
    "check_invariants",
    "decide",
    "evolve",
    "initial_state",
    "outbox_messages",
    "process",
]
