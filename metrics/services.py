"""Refreshing the metric views.

``REFRESH MATERIALIZED VIEW CONCURRENTLY`` takes an EXCLUSIVE lock on the view, which still lets
every SELECT through, so the dashboard never waits for a refresh (tests/metrics prove it against
the plain refresh's ACCESS EXCLUSIVE). It needs the view's unique index and a populated view: the
views are created empty (migration 0001), so the first refresh of each is a plain one, which
blocks no one who could have read anything.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction

from metrics.matviews import METRIC_VIEWS

logger = logging.getLogger(__name__)


class UnknownMetricView(ValueError):
    """A refresh was asked for a view this app does not own."""


@dataclass(frozen=True)
class RefreshResult:
    view: str
    # "concurrent", "populated" (the first, plain refresh) or "skipped" (another refresh was running).
    mode: str
    duration_ms: float


def metric_view_is_populated(*, view: str) -> bool:
    """Whether ``view`` has been computed at least once (reading an unpopulated one is an error)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT ispopulated FROM pg_matviews WHERE matviewname = %s", [view])
        row = cursor.fetchone()
    return bool(row and row[0])


@transaction.atomic
def metric_view_refresh(*, view: str, timeout_seconds: float | None = None) -> RefreshResult:
    """Recompute ``view`` without blocking its readers.

    A refresh already running for the same view (a slow one overlapping the next schedule, or a
    manual one) makes this one return ``skipped`` at once instead of queueing behind it: the later
    refresh would compute the same rows. ``timeout_seconds`` (default
    ``METRICS_REFRESH_TIMEOUT_SECONDS``, 0 for none) replaces ``DB_STATEMENT_TIMEOUT_MS`` for this
    transaction only, because a refresh reads whole tables and the request timeout would cut it.
    """
    if view not in METRIC_VIEWS:
        raise UnknownMetricView(f"unknown metric view {view!r}; expected one of {', '.join(METRIC_VIEWS)}")
    timeout = settings.METRICS_REFRESH_TIMEOUT_SECONDS if timeout_seconds is None else timeout_seconds
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(hashtext(%s))", [f"convo.metrics.refresh.{view}"])
        (locked,) = cursor.fetchone() or (False,)
        if not locked:
            logger.info("metric view %s: a refresh is already running, skipped", view)
            return RefreshResult(view=view, mode="skipped", duration_ms=0.0)
        cursor.execute("SELECT set_config('statement_timeout', %s, true)", [str(int(timeout * 1000))])
        populated = metric_view_is_populated(view=view)
        # The name is one of METRIC_VIEWS (checked above), never input.
        cursor.execute(f"REFRESH MATERIALIZED VIEW {'CONCURRENTLY ' if populated else ''}{view}")
    duration_ms = (time.perf_counter() - started) * 1000
    mode = "concurrent" if populated else "populated"
    logger.info("metric view %s refreshed (%s) in %.1f ms", view, mode, duration_ms)
    return RefreshResult(view=view, mode=mode, duration_ms=duration_ms)


def metric_views_refresh(*, views: tuple[str, ...] = METRIC_VIEWS) -> list[RefreshResult]:
    """Refresh each of ``views``, each in its own transaction (one view's lock is never held while
    the next one computes)."""
    return [metric_view_refresh(view=view) for view in views]
