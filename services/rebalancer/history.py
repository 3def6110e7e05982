"""Per-VM sample histories for policies that look back (MoM's ``StatAvg``, our demand window).

Why a ring of columns: a policy pushes one value per VM per decision, for the whole fleet at once,
so the natural layout is ``(vms, samples)`` with one column written per push -- O(vms) per push,
no reallocation. VMs come and go in live mode, so a history is keyed by the view's ``vm_ids`` and
re-laid when they change (kept rows move, new VMs start empty); in the simulation the ids never
change and ``align`` is one identity test.

Missing samples (no status report yet) are NaN and ignored by every statistic.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]


class History:
    """The last ``length`` samples of one quantity for every VM, with their times."""

    def __init__(self, length: int) -> None:
        if length < 1:
            raise ValueError("a history holds at least one sample")
        self.length = length
        self._ids: tuple[str, ...] = ()
        self._data: Floats = np.full((0, length), np.nan)
        self._times: Floats = np.full(length, np.nan)
        self._pos = 0
        self.pushes = 0

    def align(self, ids: tuple[str, ...]) -> None:
        """Re-lay the rows for ``ids``: rows of known VMs are kept, new VMs start with no samples."""
        if ids is self._ids or ids == self._ids:
            self._ids = ids
            return
        old = {vm: i for i, vm in enumerate(self._ids)}
        data = np.full((len(ids), self.length), np.nan)
        for row, vm in enumerate(ids):
            prev = old.get(vm)
            if prev is not None:
                data[row] = self._data[prev]
        self._ids, self._data = ids, data

    def push(self, now: float, values: Floats) -> None:
        """One sample per VM (NaN: none) taken at ``now``."""
        self._data[:, self._pos] = values
        self._times[self._pos] = now
        self._pos = (self._pos + 1) % self.length
        self.pushes += 1

    def ordered(self, last: int | None = None) -> tuple[Floats, Floats]:
        """(times, samples) oldest first, optionally only the ``last`` pushes."""
        order = (np.arange(self.length) + self._pos) % self.length
        times, data = self._times[order], self._data[:, order]
        if last is not None and last < self.length:
            times, data = times[-last:], data[:, -last:]
        return times, data

    def window(self, now: float, seconds: float) -> Floats:
        """Samples taken within the last ``seconds`` (older columns masked as NaN)."""
        times, data = self.ordered()
        keep = times >= now - seconds
        return np.where(keep[np.newaxis, :], data, np.nan)

    @staticmethod
    def peak(samples: Floats) -> Floats:
        """Row maxima ignoring NaN (NaN for a row without samples)."""
        if samples.shape[1] == 0:
            return np.full(samples.shape[0], np.nan)
        out: Floats = np.fmax.reduce(samples, axis=1)
        return out

    @staticmethod
    def mean(samples: Floats) -> Floats:
        """Row means ignoring NaN (NaN for a row without samples)."""
        valid = ~np.isnan(samples)
        count = valid.sum(axis=1)
        total = np.where(valid, samples, 0.0).sum(axis=1)
        out = np.full(samples.shape[0], np.nan)
        np.divide(total, count, out=out, where=count > 0)
        return out


class BucketHistory:
    """Per-VM maximum and minimum of a quantity per time bucket, for the last ``buckets`` buckets.

    Why buckets: a 30-minute peak over 5-second samples is 360 columns per VM per decision; the
    maxima of one-minute buckets answer the same question (to a minute) with 30, which keeps the
    1,000-VM simulation fast. The current bucket is updated in place by every push.
    """

    def __init__(self, bucket_seconds: float, buckets: int) -> None:
        if bucket_seconds <= 0 or buckets < 2:
            raise ValueError("need a positive bucket length and at least two buckets")
        self.bucket_seconds = bucket_seconds
        self.buckets = buckets
        self._ids: tuple[str, ...] = ()
        self._max: Floats = np.full((0, buckets), np.nan)
        self._min: Floats = np.full((0, buckets), np.nan)
        self._bucket: int | None = None  # absolute index of the current bucket
        self._pos = 0

    def align(self, ids: tuple[str, ...]) -> None:
        if ids is self._ids or ids == self._ids:
            self._ids = ids
            return
        old = {vm: i for i, vm in enumerate(self._ids)}
        hi = np.full((len(ids), self.buckets), np.nan)
        lo = np.full((len(ids), self.buckets), np.nan)
        for row, vm in enumerate(ids):
            prev = old.get(vm)
            if prev is not None:
                hi[row], lo[row] = self._max[prev], self._min[prev]
        self._ids, self._max, self._min = ids, hi, lo

    def push(self, now: float, values: Floats) -> None:
        bucket = int(now // self.bucket_seconds)
        if self._bucket is None:
            self._bucket = bucket
        steps = min(max(bucket - self._bucket, 0), self.buckets)
        for _ in range(steps):
            self._pos = (self._pos + 1) % self.buckets
            self._max[:, self._pos] = np.nan
            self._min[:, self._pos] = np.nan
        self._bucket = max(bucket, self._bucket)
        col = self._pos
        self._max[:, col] = np.fmax(self._max[:, col], values)
        self._min[:, col] = np.fmin(self._min[:, col], values)

    def _last(self, data: Floats, count: int) -> Floats:
        count = max(1, min(count, self.buckets))
        cols = (self._pos - np.arange(count)) % self.buckets
        return data[:, cols]  # newest first

    def peak(self, buckets: int) -> Floats:
        """Maximum over the newest ``buckets`` buckets (the current one included)."""
        return History.peak(self._last(self._max, buckets))

    def peak_quantile(self, buckets: int, q: float) -> Floats:
        """The ``q``-quantile (lower) of the per-bucket maxima over the newest ``buckets`` buckets.

        ``q = 1`` is the peak. Sorting puts NaN last, so the quantile is taken among the buckets
        that have samples, without ``nanquantile``'s per-row Python loop.
        """
        data = np.sort(self._last(self._max, buckets), axis=1)
        valid = (~np.isnan(data)).sum(axis=1)
        index = np.floor(q * np.maximum(valid - 1, 0)).astype(np.intp)
        out = np.take_along_axis(data, index[:, np.newaxis], axis=1)[:, 0]
        return np.where(valid > 0, out, np.nan)

    def floor_trend(self, buckets: int) -> Floats:
        """Growth per second of the per-bucket minima between the oldest and the newest of the last
        ``buckets`` complete buckets (0 where unknown). Minima ignore upward bursts, so a bursty
        guest shows no trend and a leak shows its slope."""
        span = max(2, min(buckets, self.buckets - 1))
        cols = (self._pos - 1 - np.arange(span)) % self.buckets  # complete buckets, newest first
        newest, oldest = self._min[:, cols[0]], self._min[:, cols[-1]]
        slope = (newest - oldest) / ((span - 1) * self.bucket_seconds)
        return np.nan_to_num(slope, nan=0.0)
