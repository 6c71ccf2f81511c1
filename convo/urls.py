from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from convo import health
from convo.api.errors import json_not_found

urlpatterns = [
    # Probes for load balancers: unauthenticated, outside the API and its schema (docs/operations.md).
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("conversations.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    # Unknown API paths answer JSON even with DEBUG on (handler404 only applies without it).
    re_path(r"^api/", json_not_found),
]

handler404 = "convo.api.errors.json_not_found"
handler500 = "convo.api.errors.json_server_error"
