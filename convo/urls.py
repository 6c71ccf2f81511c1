from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from convo import health
from convo.api.errors import json_not_found
from convo.monitoring.metrics_view import metrics
from metrics.admin_views import metrics_dashboard

urlpatterns = [
    # Probes for load balancers: unauthenticated, outside the API and its schema (docs/operations.md).
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    # Prometheus, behind METRICS_ENABLED and a token or allowed addresses (docs/operations.md).
    path("metrics", metrics, name="metrics"),
    # The staff dashboard of the metric views (docs/operations.md, "Dashboard"); before admin/'s catch-all.
    path("admin/dashboard/", admin.site.admin_view(metrics_dashboard), name="admin-dashboard"),
    path("admin/", admin.site.urls),
    # Staff-only operations figures and alerts, across tenants (docs/operations.md, "Stats API").
    path("api/v1/ops/", include("convo.monitoring.urls")),
    path("api/v1/", include("conversations.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    # Unknown API paths answer JSON even with DEBUG on (handler404 only applies without it).
    re_path(r"^api/", json_not_found),
]

handler404 = "convo.api.errors.json_not_found"
handler500 = "convo.api.errors.json_server_error"
