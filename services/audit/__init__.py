"""Audit and point-in-time replay of an hvdm log: no I/O beyond reading the log, no argparse.

* ``logfile``       -- open an existing log (never create one), read its engine config
* ``replay``        -- re-decide the inbox with the runner's delivery rules
* ``divergence``    -- compare decided and recorded events byte for byte
* ``transactions``  -- balloon / unballoon transactions and their throughput
* ``report``        -- ``audit()``: replay + compare + fold into an ``AuditReport``
* ``point_in_time`` -- ``state_at()``: one VM's state at an inbox position or tick
* ``render``        -- plain-text output of both
"""

from services.audit.divergence import Divergence
from services.audit.logfile import LogError, open_log
from services.audit.point_in_time import PointInTime, state_at
from services.audit.render import audit_text, point_text
from services.audit.replay import InboxReplay, ReplayError
from services.audit.report import AuditReport, audit

__all__ = [
    "AuditReport",
    "Divergence",
    "InboxReplay",
    "LogError",
    "PointInTime",
    "ReplayError",
    "audit",
    "audit_text",
    "open_log",
    "point_text",
    "state_at",
]
