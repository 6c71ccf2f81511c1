"""Admin of the ``convo`` app: alert episodes, read-only (they are written by the evaluator)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from convo.monitoring.models import Alert


class OpenFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("open", "open"), ("resolved", "resolved")]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        if self.value() in ("open", "resolved"):
            return queryset.filter(resolved_at__isnull=self.value() == "open")
        return queryset


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = ["rule", "raised_at", "resolved_at", "value", "threshold", "message"]
    list_filter = [OpenFilter, "rule"]
    readonly_fields = ["rule", "raised_at", "resolved_at", "value", "threshold", "message"]
    date_hierarchy = "raised_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Alert | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Alert | None = None) -> bool:
        return False
