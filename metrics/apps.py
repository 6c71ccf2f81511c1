from django.apps import AppConfig


class MetricsConfig(AppConfig):
    """Seed 001's metric views (materialized, refreshed on a schedule) and the staff dashboard
    that charts them (docs/operations.md, "Metric views" and "Dashboard")."""

    name = "metrics"
    default_auto_field = "django.db.models.BigAutoField"
