"""The materialized views this app owns (created by migration 0001), by name."""

from __future__ import annotations

CONVERSATION_METRICS = "conversation_metrics"
PERFORMANCE_STATS = "performance_stats"

# The names a refresh accepts; anything else is refused before it gets near SQL.
METRIC_VIEWS: tuple[str, ...] = (CONVERSATION_METRICS, PERFORMANCE_STATS)
