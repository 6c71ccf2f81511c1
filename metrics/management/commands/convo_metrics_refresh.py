"""Refresh the metric views now (the schedules do it on their own; this is for deploys, backfills
and operators who want today's numbers at once).

    manage.py convo_metrics_refresh                          # both views
    manage.py convo_metrics_refresh --view performance_stats
    manage.py convo_metrics_refresh --timeout 0              # no statement timeout (a huge first run)
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from metrics.matviews import METRIC_VIEWS
from metrics.services import metric_view_refresh


class Command(BaseCommand):
    help = "Refresh the metric views (REFRESH MATERIALIZED VIEW CONCURRENTLY), printing each one's duration."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--view", choices=METRIC_VIEWS, help="Only this view (default: all).")
        parser.add_argument(
            "--timeout",
            type=float,
            help="Statement timeout, seconds (default METRICS_REFRESH_TIMEOUT_SECONDS; 0: none).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        views = (options["view"],) if options["view"] else METRIC_VIEWS
        for view in views:
            result = metric_view_refresh(view=view, timeout_seconds=options["timeout"])
            self.stdout.write(f"{result.view}: {result.mode} in {result.duration_ms:.1f} ms")
