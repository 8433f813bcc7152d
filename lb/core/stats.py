"""Traffic statistics: plain counters on the hot path, exported on demand. No I/O.

Theory of operation
-------------------
Every finished request costs the data plane one `StatsDelta.record` call: a
dict increment for (version, status class), a bisect into the Prometheus
histogram buckets, and one into the fine buckets of the current second. The
data plane hands its deltas to the control plane in its reports (never per
request), which merges them into each node's `BackendStats` (`merge`): the
totals since lb started and a 60 s sliding window. Nothing is formatted or
locked per request; `/metrics` and `show stats` read the merged counters.

The window keeps, per second, counts in log-spaced buckets 4 % apart, so p50 and
p99 over the last minute are read to within ~4 %.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import Counter

# Prometheus histogram upper bounds, seconds.
HISTOGRAM_BOUNDS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                      5.0, 10.0, 30.0, 60.0)
WINDOW_S = 60
FINE_RATIO = 1.04
FINE_FLOOR_S = 0.0001
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_INV_FLOOR = 1.0 / FINE_FLOOR_S
_INV_LOG_RATIO = 1.0 / math.log(FINE_RATIO)
_log = math.log


def iso_utc(epoch_s: float) -> str:
    """A wall-clock time as shown to operators: 2026-11-26T18:00:00Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def class_index(status: int) -> int:
    """0..4 for 1xx..5xx (anything out of range counts in the nearest class)."""
    return min(max(status // 100, 1), 5) - 1


def fine_bucket(duration_s: float) -> int:
    """The latency window's bucket of a duration: log-spaced FINE_RATIO apart."""
    return int(math.log(duration_s * _INV_FLOOR) * _INV_LOG_RATIO) + 1 \
        if duration_s > FINE_FLOOR_S else 0


class LatencyWindow:
    """Per-second sparse histograms of the last WINDOW_S seconds."""

    __slots__ = ("_seconds", "_buckets")

    def __init__(self):
        self._seconds = [-1] * WINDOW_S
        self._buckets: list[dict[int, int]] = [{} for _ in range(WINDOW_S)]

    def add(self, duration_s: float, now_s: float) -> None:
        buckets = self._second(int(now_s))
        fine = fine_bucket(duration_s)
        buckets[fine] = buckets.get(fine, 0) + 1

    def merge(self, second: int, counts: dict[int, int]) -> None:
        """Add one second's bucket counts (a data plane's report) to the window."""
        if second <= self._newest() - WINDOW_S:
            return                                    # older than the window
        buckets = self._second(second)
        for fine, count in counts.items():
            buckets[fine] = buckets.get(fine, 0) + count

    def _second(self, second: int) -> dict[int, int]:
        slot = second % WINDOW_S
        if self._seconds[slot] != second:
            self._seconds[slot] = second
            self._buckets[slot] = {}
        return self._buckets[slot]

    def _newest(self) -> int:
        return max(self._seconds)

    def export(self) -> dict:
        """The window as builtins (handed to a new master at an upgrade)."""
        return {"seconds": list(self._seconds), "buckets": [dict(b) for b in self._buckets]}

    def load(self, exported: dict) -> None:
        """Merge an exported window into this one (seconds are CLOCK_MONOTONIC, one clock for
        every process of the machine)."""
        for second, counts in zip(exported["seconds"], exported["buckets"]):
            if second >= 0 and counts:
                self.merge(second, counts)

    def counts(self, now_s: float, window_s: int = WINDOW_S) -> Counter:
        """Fine-bucket counts of the last `window_s` seconds (the current one included)."""
        oldest = int(now_s) - min(max(window_s, 1), WINDOW_S) + 1
        merged: Counter = Counter()
        for second, buckets in zip(self._seconds, self._buckets):
            if second >= oldest:
                merged.update(buckets)
        return merged

    def quantiles(self, now_s: float, qs=(0.5, 0.99)) -> list[float | None]:
        """Latency quantiles in seconds over the last WINDOW_S seconds (None if empty)."""
        return bucket_quantiles(self.counts(now_s), qs)


def bucket_quantiles(counts: Counter, qs=(0.5, 0.99)) -> list[float | None]:
    """Quantiles in seconds of fine-bucket counts (merged from any number of windows)."""
    total = sum(counts.values())
    if not total:
        return [None] * len(qs)
    ordered = sorted(counts.items())
    out = []
    for q in qs:
        rank, seen = q * total, 0
        for index, count in ordered:
            seen += count
            if seen >= rank:
                # the bucket's geometric middle
                out.append(FINE_FLOOR_S * FINE_RATIO ** (index - 0.5) if index else FINE_FLOOR_S)
                break
    return out


def ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 2) if seconds is not None else None


class StatsDelta:
    """What one node served in this data plane since its last report."""

    __slots__ = ("by_class", "histogram", "histogram_sum", "window", "retries",
                 "connect_errors", "lb_failures", "errors")

    def __init__(self):
        self.by_class: dict[str, list[int]] = {}      # version -> requests per class 1xx..5xx
        self.histogram = [0] * (len(HISTOGRAM_BOUNDS_S) + 1)
        self.histogram_sum = 0.0
        self.window: dict[int, dict[int, int]] = {}  # second -> fine bucket -> count
        self.retries = 0            # requests that left this backend for another try
        self.connect_errors = 0
        self.lb_failures = 0        # responses lb made (or cuts) for requests sent here
        self.errors = 0             # connect errors, 5xx and bad responses

    def record(self, version: str, status: int, duration_s: float, now_s: float) -> None:
        counts = self.by_class.get(version)
        if counts is None:
            counts = self.by_class[version] = [0, 0, 0, 0, 0]
        counts[(5 if status >= 500 else status // 100 if status >= 100 else 1) - 1] += 1   # class_index
        self.histogram[bisect.bisect_left(HISTOGRAM_BOUNDS_S, duration_s)] += 1
        self.histogram_sum += duration_s
        second = int(now_s)
        buckets = self.window.get(second)
        if buckets is None:
            buckets = self.window[second] = {}
        fine = int(_log(duration_s * _INV_FLOOR) * _INV_LOG_RATIO) + 1 if duration_s > FINE_FLOOR_S else 0  # fine_bucket
        buckets[fine] = buckets.get(fine, 0) + 1

    @property
    def requests(self) -> int:
        return sum(sum(counts) for counts in self.by_class.values())

    @property
    def empty(self) -> bool:
        return not (self.by_class or self.retries or self.connect_errors or self.lb_failures
                    or self.errors)


class BackendStats:
    """Counters of one backend since lb started (never reset), merged from deltas."""

    __slots__ = ("by_class", "histogram", "histogram_sum", "window", "retries",
                 "connect_errors", "lb_failures", "since")

    def __init__(self, since: float):
        self.by_class: dict[str, list[int]] = {}      # version -> requests per class 1xx..5xx
        self.histogram = [0] * (len(HISTOGRAM_BOUNDS_S) + 1)
        self.histogram_sum = 0.0
        self.window = LatencyWindow()
        self.retries = 0
        self.connect_errors = 0
        self.lb_failures = 0
        self.since = since          # wall clock, epoch seconds

    def merge(self, delta: StatsDelta) -> None:
        for version, counts in delta.by_class.items():
            mine = self.by_class.get(version)
            if mine is None:
                mine = self.by_class[version] = [0, 0, 0, 0, 0]
            for index, count in enumerate(counts):
                mine[index] += count
        for index, count in enumerate(delta.histogram):
            self.histogram[index] += count
        self.histogram_sum += delta.histogram_sum
        for second in sorted(delta.window):
            self.window.merge(second, delta.window[second])
        self.retries += delta.retries
        self.connect_errors += delta.connect_errors
        self.lb_failures += delta.lb_failures

    def summary(self, now_s: float) -> dict:
        classes = Counter()
        for counts in self.by_class.values():
            for cls, count in zip(CLASSES, counts):
                classes[cls] += count
        p50, p99 = self.window.quantiles(now_s)
        return {"requests": sum(classes.values()), **{c: classes[c] for c in CLASSES[1:]},
                "lb_failures": self.lb_failures, "retries": self.retries,
                "connect_errors": self.connect_errors,
                "p50_ms": ms(p50), "p99_ms": ms(p99),
                "since": iso_utc(self.since)}


class PoolStats:
    """Counters that belong to no backend: lb-made failures by reason, retries, drains."""

    def __init__(self, since: float):
        self.failed: Counter = Counter()               # reason -> count
        self.retries = 0
        self.drains = 0
        self.drain_durations: list[float] = []
        self.since = since                             # wall clock, epoch seconds
