"""The latency window (pure, `now` passed in): per-second buckets, windows, merging."""

import pytest

from lb.core.stats import LatencyWindow, bucket_quantiles


def window_with(samples) -> LatencyWindow:
    window = LatencyWindow()
    for duration_s, now_s in samples:
        window.add(duration_s, now_s)
    return window


@pytest.mark.parametrize("window_s, now_s, expected", [
    (60, 1000.5, 3),        # all three seconds are inside the minute
    (1, 1000.5, 1),         # only the current second
    (2, 1000.5, 2),
    (10, 1009.0, 1),        # 998 and 999 left the 10 s window
    (10, 1058.0, 0),        # all left the 10 s window, though still in the minute
    (60, 1059.9, 1),        # second 1000 is the oldest of the last minute
    (60, 1060.0, 0),        # ...and gone one second later
    (0, 1000.5, 1),         # a window is at least one second
    (600, 1000.5, 3),       # and at most the minute kept
])
def test_counts_cover_exactly_the_last_seconds(window_s, now_s, expected):
    window = window_with([(0.01, 998.2), (0.01, 999.7), (0.01, 1000.1)])
    assert sum(window.counts(now_s, window_s).values()) == expected


def test_merged_windows_give_the_group_quantile():
    fast = window_with([(0.002, 500.0)] * 98)
    slow = window_with([(0.200, 500.0)] * 2)
    merged = fast.counts(500.5, 5) + slow.counts(500.5, 5)
    p50, p99 = bucket_quantiles(merged)
    assert p50 == pytest.approx(0.002, rel=0.04)
    assert p99 == pytest.approx(0.200, rel=0.04)
    assert bucket_quantiles(fast.counts(500.5, 5) + slow.counts(600.0, 5)) == \
        pytest.approx([0.002, 0.002], rel=0.04)     # slow's samples are out of its window


def test_an_empty_window_has_no_quantiles():
    assert bucket_quantiles(LatencyWindow().counts(10.0, 5), (0.5, 0.9, 0.99)) == [None] * 3
