"""Crash, don't limp: a worker that fails in deciding or writing leaves at once.

Why ``os._exit``: nothing after a failure may be acknowledged or committed (no ``finally``, no
Faust shutdown that would commit acknowledged offsets); the group moves the partitions and the
next owner replays from the committed offset.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

#: Exit status when the worker stops itself after a failure (EX_SOFTWARE).
EXIT_CRASH = 70


def crash() -> NoReturn:
    """Leave at once: nothing after a failure may be acknowledged or committed."""
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_CRASH)
