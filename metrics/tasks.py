"""django-q2 entry points for the metric-view schedules (created by ``manage.py convo_schedules``)."""

from __future__ import annotations

from metrics.matviews import CONVERSATION_METRICS, PERFORMANCE_STATS
from metrics.services import metric_view_refresh


def refresh_conversation_metrics() -> str:
    """Recompute the daily view (hourly by default: METRICS_CONVERSATION_REFRESH_MINUTES)."""
    return metric_view_refresh(view=CONVERSATION_METRICS).mode


def refresh_performance_stats() -> str:
    """Recompute the hourly view (every 5 minutes by default: METRICS_PERFORMANCE_REFRESH_MINUTES)."""
    return metric_view_refresh(view=PERFORMANCE_STATS).mode
