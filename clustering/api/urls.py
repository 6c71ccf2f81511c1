"""Routes of the clusters API, included under /api/v1/ by conversations/api/urls.py."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, re_path

from clustering.api.views import ClusterViewSet, MessageClusterView
from conversations.api.urls import OptionalSlashRouter
from conversations.api.views import UUID_PATTERN

router = OptionalSlashRouter()
router.register("clusters", ClusterViewSet, basename="cluster")

urlpatterns: list[URLPattern | URLResolver] = [
    *router.urls,
    re_path(
        rf"^messages/(?P<message_id>{UUID_PATTERN})/cluster/?$", MessageClusterView.as_view(), name="message-cluster"
    ),
]
