"""Create or update convo's django-q2 schedules. Idempotent: run it on every deploy."""

from __future__ import annotations

from typing import Any

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
}


class Command(BaseCommand):
    help = "Create or update the django-q2 schedules convo relies on."

    def handle(self, *args: Any, **options: Any) -> None:
        for name, fields in SCHEDULES.items():
            _, created = Schedule.objects.update_or_create(name=name, defaults={**fields, "repeats": -1})
            self.stdout.write(f"{'created' if created else 'updated'} schedule: {name}")
