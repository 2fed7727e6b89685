"""Fixed-bucket histograms counted where the observations happen (the writer process) and reported up in
its status, so that the root can serve them as Prometheus histograms (``l2rec.runtime.metrics``) without a
shared multiprocess directory.

The bounds are fixed (module constants), so reports of different incarnations add up bucket by bucket, as
the other counters do. An observation costs one ``bisect`` and one list increment; nothing is kept per
observation.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence

# Seconds. A commit is one transaction of a group of batches: ~1-50 ms normally, seconds when SQLite
# checkpoints inside it or a disk stalls.
COMMIT_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                       10.0)
# Seconds from a frame's receive stamp to the commit of its row: write_interval (50 ms) plus the commit in
# steady state; the live target is p99 <= 250 ms, so the buckets are finest around it.
RECV_TO_COMMIT_BUCKETS_S: tuple[float, ...] = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
                                               10.0, 30.0)


class Buckets:
    """Counts of observations per bucket (``counts[i]``: bounds[i-1] < value <= bounds[i]; the last one
    above every bound), and their sum. Observations in nanoseconds (``observe_ns``) compare against the
    bounds in whole nanoseconds, so the writer's per-row loop does no float arithmetic for it."""

    __slots__ = ("bounds_ns", "bounds_s", "counts", "sum_ns")

    def __init__(self, bounds_s: Sequence[float]) -> None:
        self.bounds_s = tuple(bounds_s)
        self.bounds_ns = tuple(round(b * 1e9) for b in self.bounds_s)
        self.counts = [0] * (len(self.bounds_s) + 1)
        self.sum_ns = 0

    def observe_ns(self, value_ns: int) -> None:
        """One observation of ``value_ns`` nanoseconds."""
        self.counts[bisect_left(self.bounds_ns, value_ns)] += 1
        self.sum_ns += value_ns

    def status(self) -> dict[str, object]:
        """For a status report: the counts per bucket (not cumulative) and the sum in seconds."""
        return {"counts": list(self.counts), "sum_s": self.sum_ns / 1e9}


def add_counts(into: list[int], report: object) -> float:
    """Add a reported ``Buckets.status()`` to ``into`` (same bounds, so the same length); returns its sum
    in seconds. A report of another shape (an older version, a different bound count) adds nothing."""
    if not isinstance(report, Mapping):
        return 0.0
    counts, total = report.get("counts"), report.get("sum_s")
    if not isinstance(counts, list) or len(counts) != len(into) or not isinstance(total, int | float):
        return 0.0
    for i, n in enumerate(counts):
        if isinstance(n, int):
            into[i] += n
    return float(total)
