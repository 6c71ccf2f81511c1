from django.urls import include, path, re_path
from rest_framework.routers import SimpleRouter

from conversations.api.search_views import ContextView, SearchView
from conversations.api.views import ConversationViewSet, MessageViewSet, UserStatsView


class OptionalSlashRouter(SimpleRouter):
    """Routes answer with and without a trailing slash: a POST must never meet APPEND_SLASH's
    redirect, which would drop its body."""

    def __init__(self) -> None:
        super().__init__()
        self.trailing_slash = "/?"


router = OptionalSlashRouter()
router.register("conversations", ConversationViewSet, basename="conversation")
router.register("messages", MessageViewSet, basename="message")

urlpatterns = [
    *router.urls,
    path("users/<str:user_id>/stats", UserStatsView.as_view(), name="user-stats"),
    re_path(r"^search/?$", SearchView.as_view(), name="search"),
    re_path(r"^context/?$", ContextView.as_view(), name="context"),
    path("", include("clustering.api.delivery_urls")),
    path("", include("clustering.api.urls")),
    path("", include("feedback.api.urls")),
]
