"""Create or update convo's django-q2 schedules. Idempotent: run it on every deploy."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django_q.models import Schedule

SCHEDULES: dict[str, dict[str, Any]] = {
    "convo: reconcile embeddings": {
        "func": "conversations.tasks.reconcile_embeddings",
        "schedule_type": Schedule.MINUTES,
        "minutes": 1,
    },
    "convo: send due deliveries": {
        "func": "clustering.tasks.send_due_deliveries",
        "schedule_type": Schedule.MINUTES,
        "minutes": 1,
    },
    # The metric views (metrics/): intervals are settings, so a changed one lands on the next deploy.
    "convo: refresh conversation_metrics": {
        "func": "metrics.tasks.refresh_conversation_metrics",
        "schedule_type": Schedule.MINUTES,
        "minutes": settings.METRICS_CONVERSATION_REFRESH_MINUTES,
    },
    "convo: refresh performance_stats": {
        "func": "metrics.tasks.refresh_performance_stats",
        "schedule_type": Schedule.MINUTES,
        "minutes": settings.METRICS_PERFORMANCE_REFRESH_MINUTES,
    },
    # Alert rules (docs/operations.md, "Alerts"): one episode per firing, raised and resolved here.
    "convo: evaluate alerts": {
        "func": "convo.monitoring.tasks.alerts_evaluate_task",
        "schedule_type": Schedule.MINUTES,
        "minutes": 1,
    },
}


class Command(BaseCommand):
    help = "Create or update the django-q2 schedules convo relies on."

    def handle(self, *args: Any, **options: Any) -> None:
        for name, fields in SCHEDULES.items():
            _, created = Schedule.objects.update_or_create(name=name, defaults={**fields, "repeats": -1})
            self.stdout.write(f"{'created' if created else 'updated'} schedule: {name}")
