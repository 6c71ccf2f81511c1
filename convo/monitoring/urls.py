from django.urls import path

from convo.monitoring.api import OpsAlertsView, OpsStatsView

urlpatterns = [
    path("stats", OpsStatsView.as_view(), name="ops-stats"),
    path("alerts", OpsAlertsView.as_view(), name="ops-alerts"),
]
