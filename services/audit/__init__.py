"""Audit and point-in-time replay of an hvdm log: no I/O beyond reading the log, no argparse.

* ``reader``        -- the ``LogReader`` interface; a read-only SQLite reader of any schema version;
                       the seam for a Kafka reader (``open_broker_reader``)
* ``logfile``       -- open an existing log (never create one), read its engine config
* ``replay``        -- re-decide the inbox with the runner's delivery rules
* ``divergence``    -- compare decided and recorded events byte for byte (upcasting old records)
* ``transactions``  -- balloon / unballoon transactions and their throughput
* ``behaviour``     -- per-VM guest behaviour: violations with ranges, latencies, cadence, protocol
* ``report``        -- ``audit()``: replay + compare + fold into an ``AuditReport``
* ``point_in_time`` -- ``state_at()``: one VM's state at an inbox position or tick
* ``render``        -- plain-text output of both; ``html`` -- the self-contained HTML report
"""

from .divergence import Divergence
from .logfile import LogError, open_log, open_reader
from .point_in_time import PointInTime, state_at
from .reader import LogReader, SqliteReader
from .render import audit_text, point_text
from .replay import InboxReplay, ReplayError
from .report import AuditReport, audit

__all__ = [
    "AuditReport",
    "Divergence",
    "InboxReplay",
    "LogError",
    "LogReader",
    "PointInTime",
    "ReplayError",
    "SqliteReader",
    "audit",
    "audit_text",
    "open_log",
    "open_reader",
    "point_text",
    "state_at",
]
