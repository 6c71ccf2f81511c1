from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from convo.api.errors import json_not_found

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("conversations.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    # Unknown API paths answer JSON even with DEBUG on (handler404 only applies without it).
    re_path(r"^api/", json_not_found),
]

handler404 = "convo.api.errors.json_not_found"
handler500 = "convo.api.errors.json_server_error"
