from django.urls import path
from rest_framework.routers import SimpleRouter

from conversations.api.views import ConversationViewSet, MessageViewSet, UserStatsView

router = SimpleRouter(trailing_slash="/?")
router.register("conversations", ConversationViewSet, basename="conversation")
router.register("messages", MessageViewSet, basename="message")

urlpatterns = [
    *router.urls,
    path("users/<str:user_id>/stats", UserStatsView.as_view(), name="user-stats"),
]
