"""Routes of the delivery API, included under /api/v1/ by conversations/api/urls.py."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, re_path
from rest_framework.routers import SimpleRouter

from clustering.api.delivery_views import DeliveryEndpointView, DeliveryViewSet


class _OptionalSlashRouter(SimpleRouter):
    """With and without a trailing slash: a POST must never meet APPEND_SLASH's redirect."""

    def __init__(self) -> None:
        super().__init__()
        self.trailing_slash = "/?"


router = _OptionalSlashRouter()
router.register("deliveries", DeliveryViewSet, basename="delivery")

delivery_urlpatterns: list[URLPattern | URLResolver] = [
    *router.urls,
    re_path(r"^delivery-endpoint/?$", DeliveryEndpointView.as_view(), name="delivery-endpoint"),
]
urlpatterns = delivery_urlpatterns
