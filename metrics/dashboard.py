"""The dashboard's charts: each selector's figures drawn as an SVG chart, in page order."""

from __future__ import annotations

from typing import Any

from django.utils.safestring import SafeString

from metrics import selectors
from metrics.charts import Series, chart_bars, chart_lines, chart_ranking


def _series(values: dict[str, list[float | None]]) -> list[Series]:
    return [Series(name=name, values=points) for name, points in values.items()]


def _chart(key: str, title: str, svg: SafeString | None, note: str = "") -> dict[str, Any]:
    return {"key": key, "title": title, "svg": svg, "note": note}


def dashboard_charts(*, days: int, tenant_id: int | None, views_ready: bool) -> list[dict[str, Any]]:
    """Every chart of the page, in order; ``svg`` is None where there is nothing to draw yet.
    Before the metric views are first computed only the charts that do not read them are made."""
    charts: list[dict[str, Any]] = []
    if views_ready:
        ingest = selectors.ingest_per_day(days=days, tenant_id=tenant_id)
        day_labels = [f"{day:%d %b}" for day in ingest.days]
        charts.append(
            _chart(
                "ingest",
                f"Messages per day by channel (last {days} days)",
                chart_bars(title="Messages per day", labels=day_labels, series=_series(ingest.series))
                if ingest.series
                else None,
            )
        )
        lag = selectors.embedding_lag_per_day(days=days, tenant_id=tenant_id)
        has_lag = any(value is not None for value in lag.series["p95"])
        charts.append(
            _chart(
                "embedding-lag",
                "Embedding lag per day: arrival to vector",
                chart_lines(title="Embedding lag", labels=day_labels, series=_series(lag.series), unit=" s")
                if has_lag
                else None,
                "Worst p50/p95 over tenants and channels.",
            )
        )
        states = selectors.embedding_states(tenant_id=tenant_id)
        charts.append(
            _chart(
                "embedding-state",
                "Messages by embedding state (all time)",
                chart_bars(
                    title="Embedding state",
                    labels=list(states),
                    series=[Series(name="messages", values=list(states.values()))],
                )
                if any(states.values())
                else None,
            )
        )
        performance = selectors.performance_per_hour(tenant_id=tenant_id)
        hour_labels = [f"{hour:%d %b %Hh}" for hour in performance.times]
        batch = {name: performance.series[name] for name in ("batch size (mean)", "batch size (max)")}
        charts.append(
            _chart(
                "batches",
                "Ingest batch size per hour (last 7 days)",
                chart_lines(title="Batch size", labels=hour_labels, series=_series(batch))
                if any(value is not None for value in batch["batch size (max)"])
                else None,
                "Messages per ingest request (one transaction).",
            )
        )
        latency = {"embedding p95": performance.series["embedding p95"]}
        charts.append(
            _chart(
                "embedding-latency",
                "Embedding latency p95 per hour (last 7 days)",
                chart_lines(title="Embedding latency p95", labels=hour_labels, series=_series(latency), unit=" s")
                if any(value is not None for value in latency["embedding p95"])
                else None,
            )
        )
        feedback = selectors.feedback_by_rating(days=days, tenant_id=tenant_id)
        charts.append(
            _chart(
                "feedback",
                f"Feedback by rating (last {days} days)",
                chart_bars(
                    title="Feedback",
                    labels=list(feedback),
                    series=[Series(name="feedback", values=list(feedback.values()))],
                )
                if any(feedback.values())
                else None,
            )
        )
    timings = selectors.timings_p95_per_operation()
    charts.append(
        _chart(
            "timings",
            "p95 per operation, last hour (ms)",
            chart_lines(
                title="p95 per operation",
                labels=[f"{time:%H:%M}" for time in timings.times],
                series=_series(timings.series),
                unit=" ms",
            )
            if timings.series
            else None,
            "All tenants: operations are timed without tenant labels.",
        )
    )
    cache = selectors.cache_hit_rate_per_day(days=days)
    charts.append(
        _chart(
            "cache-hit-rate",
            f"Embedding cache hit rate per day (last {days} days)",
            chart_lines(
                title="Cache hit rate",
                labels=[f"{day:%d %b}" for day in cache.days],
                series=_series(cache.series),
                unit="%",
            )
            if any(value is not None for value in cache.series["hit rate"])
            else None,
            "All tenants: the cache is shared.",
        )
    )
    clusters = selectors.clusters_largest(tenant_id=tenant_id)
    charts.append(
        _chart(
            "clusters",
            "Largest clusters (messages)",
            chart_ranking(title="Largest clusters", labels=clusters.labels, values=clusters.values)
            if clusters.labels
            else None,
        )
    )
    return charts
