"""A fixed log-scale histogram of durations, so histograms from any process and any minute merge
by adding counts, and a percentile is read from the merged counts.

Bucket ``i >= 1`` holds durations in ``[2^((i-1)/8), 2^(i/8))`` microseconds (8 buckets per
doubling); bucket 0 holds everything under 1 µs; the last bucket holds everything from about 71
minutes up. A percentile is reported as its bucket's geometric middle, so it is within
``2^(1/16) - 1`` (4.4 %) of a duration that was recorded in that bucket.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

BUCKETS_PER_DOUBLING = 8
#: 2^32 µs ≈ 71.6 minutes: longer durations share the last bucket.
MAX_BUCKET = 32 * BUCKETS_PER_DOUBLING + 1
#: The largest relative error of a reported percentile.
RELATIVE_ERROR = 2 ** (1 / (2 * BUCKETS_PER_DOUBLING)) - 1

_LOG2 = math.log2


def bucket_of(seconds: float) -> int:
    """The bucket of a duration. Negative and NaN durations land in bucket 0."""
    micros = seconds * 1e6
    if not micros >= 1.0:  # also catches NaN
        return 0
    index = int(_LOG2(micros) * BUCKETS_PER_DOUBLING) + 1
    return index if index < MAX_BUCKET else MAX_BUCKET


def bucket_seconds(index: int) -> float:
    """The duration a bucket stands for: its geometric middle (0 for bucket 0)."""
    if index <= 0:
        return 0.0
    return 2 ** ((index - 0.5) / BUCKETS_PER_DOUBLING) / 1e6


def histogram_merge(histograms: Iterable[Mapping[int, int]]) -> dict[int, int]:
    merged: dict[int, int] = {}
    for histogram in histograms:
        for index, count in histogram.items():
            merged[index] = merged.get(index, 0) + count
    return merged


def histogram_percentiles(*, counts: Mapping[int, int], quantiles: Iterable[float]) -> list[float | None]:
    """Nearest-rank percentiles (seconds) of the merged ``counts``; ``None`` each when empty."""
    total = sum(counts.values())
    wanted = list(quantiles)
    if total <= 0:
        return [None] * len(wanted)
    ordered = sorted((index, count) for index, count in counts.items() if count > 0)
    results: list[float | None] = []
    for quantile in wanted:
        rank = max(1, math.ceil(quantile * total))
        seen = 0
        for index, count in ordered:
            seen += count
            if seen >= rank:
                results.append(bucket_seconds(index))
                break
    return results
