"""Prometheus metrics: the operation histograms, the counters, and the queue gauges collected at
scrape time; served at ``/metrics`` (``convo/monitoring/metrics_view.py``).

Multi-process mode: when ``PROMETHEUS_MULTIPROC_DIR`` is set before ``prometheus_client`` is first
imported (``make run`` sets it for gunicorn and the q cluster), every process writes its values to
its own memory-mapped files in that folder and a scrape sums them, so any gunicorn worker answers
for all of them. Without it the figures are the answering process's own.

Every label is tenant-free and from a closed set (operation, outcome, kind, result, decision), so
the number of series is bounded whatever the traffic.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

_registry = CollectorRegistry(auto_describe=True)

#: Seconds; the seeds' targets and thresholds (10, 20, 50, 100, 200, 500 ms) are bucket bounds.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

OPERATION_SECONDS = Histogram(
    "convo_operation_duration_seconds",
    "Duration of convo's timed operations (docs/operations.md, Timings).",
    ["operation", "outcome"],
    buckets=DURATION_BUCKETS,
    registry=_registry,
)
INGESTED_ITEMS = Counter(
    "convo_ingested_items", "Items acknowledged by ingest (committed).", ["kind"], registry=_registry
)
EMBEDDED_ITEMS = Counter(
    "convo_embedded_items", "Items the embedding worker finished (state done).", ["kind"], registry=_registry
)
CACHE_LOOKUPS = Counter(
    "convo_embedding_cache_lookups",
    "Texts looked up in the embedding cache by the worker, by result (hot_hit, durable_hit, miss).",
    ["result"],
    registry=_registry,
)
ANSWER_LOOKUPS = Counter(
    "convo_answer_lookups", "Knowledge-base answer lookups by decision.", ["decision"], registry=_registry
)

# Label children are looked up once: ``labels()`` takes a lock and hashes its arguments.
_observers: dict[tuple[str, bool], Histogram] = {}


def prometheus_observe(*, operation: str, ok: bool, seconds: float) -> None:
    child = _observers.get((operation, ok))
    if child is None:
        child = _observers[(operation, ok)] = OPERATION_SECONDS.labels(operation, "ok" if ok else "error")
    child.observe(seconds)


def _count(counter: Counter, label: str, amount: int) -> None:
    """Counting must never fail the work it counts."""
    if amount <= 0:
        return
    try:
        counter.labels(label).inc(amount)
    except Exception:
        logger.warning("metric %s not counted", counter._name, exc_info=True)


def metrics_ingested_count(*, kind: str, count: int) -> None:
    _count(INGESTED_ITEMS, kind, count)


def metrics_embedded_count(*, kind: str, count: int) -> None:
    _count(EMBEDDED_ITEMS, kind, count)


def metrics_cache_count(*, hot_hits: int, durable_hits: int, misses: int) -> None:
    _count(CACHE_LOOKUPS, "hot_hit", hot_hits)
    _count(CACHE_LOOKUPS, "durable_hit", durable_hits)
    _count(CACHE_LOOKUPS, "miss", misses)


def metrics_lookup_count(*, decision: str) -> None:
    _count(ANSWER_LOOKUPS, decision, 1)


class QueueCollector(Collector):
    """Queue depth and embedding lag, read from the database when scraped: per kind, the pending
    and processing counts and the oldest pending item's age, each from a partial index on those
    rows (cheap at any table size). Failed items have no such index and are left to the stats API.
    Also the number of open alerts per rule."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from convo.monitoring.alerts import alerts_open_rules
        from convo.monitoring.stats import queue_stats

        try:
            queues = queue_stats(include_failed=False)
            open_rules = alerts_open_rules()
        except Exception:
            logger.warning("queue gauges not collected", exc_info=True)
            return
        items = GaugeMetricFamily(
            "convo_queue_items", "Items in the embedding queue by state.", labels=["kind", "state"]
        )
        oldest = GaugeMetricFamily(
            "convo_queue_oldest_pending_seconds", "Age of the oldest pending item (0 when none).", labels=["kind"]
        )
        for queue in queues:
            items.add_metric([queue.kind, "pending"], queue.pending)
            items.add_metric([queue.kind, "processing"], queue.processing)
            oldest.add_metric([queue.kind], queue.oldest_pending_seconds or 0.0)
        alerts = GaugeMetricFamily("convo_alerts_open", "Open alerts by rule (1 open, 0 not).", labels=["rule"])
        from convo.monitoring.alerts import ALERT_RULES

        for rule in ALERT_RULES:
            alerts.add_metric([rule], 1.0 if rule in open_rules else 0.0)
        yield items
        yield oldest
        yield alerts


def metrics_registry() -> CollectorRegistry:
    """The registry one scrape reads: every process's files in multi-process mode (else this
    process's metrics), plus the queue gauges."""
    registry = CollectorRegistry(auto_describe=False)
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        MultiProcessCollector(registry, path=directory)
    else:
        registry.register(_registry)
    registry.register(QueueCollector())
    return registry
