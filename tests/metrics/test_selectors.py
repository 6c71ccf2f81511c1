"""Dashboard selectors whose arithmetic is their own (not the views')."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from conversations.models import EmbeddingCacheStats
from metrics.selectors import cache_hit_rate_per_day, timings_p95_per_operation

pytestmark = pytest.mark.django_db


def test_timings_land_in_the_newest_slice_only():
    from convo.monitoring.timings import timing_record, timings_discard, timings_flush

    timings_discard()
    for _ in range(19):
        timing_record(operation="search", seconds=0.010, ok=True)
    timing_record(operation="search", seconds=2.0, ok=False)  # failures count: p95 of 20 runs
    timings_flush()

    timings = timings_p95_per_operation(step_minutes=5, points=12)

    assert list(timings.series) == ["search"]
    *older, newest = timings.series["search"]
    assert older == [None] * 11
    assert newest is not None
    assert 10 <= newest < 2000  # the 19th of 20 runs: a 10 ms one, within its histogram bucket
    assert len(timings.times) == 12


def test_cache_hit_rate_sums_models_per_day():
    today = timezone.now().date()
    EmbeddingCacheStats.objects.create(model_id="a", day=today, hot_hits=2, durable_hits=1, misses=1)
    EmbeddingCacheStats.objects.create(model_id="b", day=today, hot_hits=0, durable_hits=0, misses=4)
    EmbeddingCacheStats.objects.create(model_id="a", day=today - dt.timedelta(days=40), hot_hits=9, misses=0)

    rate = cache_hit_rate_per_day(days=7)

    assert rate.days[-1] == today
    assert rate.series["hit rate"][-1] == pytest.approx(100 * 3 / 8)
    assert rate.series["hit rate"][:-1] == [None] * 6
