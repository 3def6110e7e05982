"""JSON Schemas of every record hvdm writes: inbox inputs, events, outbox DM messages and the
log-row envelopes, generated from the record definitions.

* ``generator`` -- schema documents from dataclass type hints and DM wire field kinds
* ``files``     -- the committed ``schemas/`` tree: render, write, compare
* ``validation``-- ``validator_for(kind, family)``, cached

``python -m services.schemas`` rewrites ``schemas/``; ``--check`` exits 1 when it is stale.
"""

from .files import SCHEMA_ROOT, Drift, check, write
from .generator import ENVELOPES, EVENTS, FAMILIES, INBOX, OUTBOX, generate, schema_id
from .validation import validator_for

__all__ = [
    "ENVELOPES",
    "EVENTS",
    "FAMILIES",
    "INBOX",
    "OUTBOX",
    "SCHEMA_ROOT",
    "Drift",
    "check",
    "generate",
    "schema_id",
    "validator_for",
    "write",
]
