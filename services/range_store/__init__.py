"""Sets of guest page ranges, merged on insert, with double-free (overlap) detection.

``from services.range_store import PageRangeSet, coalesce``; see :mod:`services.range_store.ranges`.
"""

from .ranges import PageRangeSet, RangeBatch, coalesce

__all__ = ["PageRangeSet", "RangeBatch", "coalesce"]
