"""Routes of the feedback API, included under /api/v1/ by conversations/api/urls.py."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, re_path

from conversations.api.urls import OptionalSlashRouter
from feedback.api.knowledge_io_views import KnowledgeExportView, KnowledgeImportView
from feedback.api.knowledge_views import KnowledgeViewSet
from feedback.api.views import (
    AnalyticsViewSet,
    CorrectionViewSet,
    FeedbackViewSet,
    LearningItemViewSet,
    TranscriptViewSet,
)

router = OptionalSlashRouter()
router.register("feedback", FeedbackViewSet, basename="feedback")
router.register("corrections", CorrectionViewSet, basename="correction")
router.register("analytics", AnalyticsViewSet, basename="analytics")
router.register("transcripts", TranscriptViewSet, basename="transcript")
router.register("learning-items", LearningItemViewSet, basename="learning-item")
router.register("knowledge", KnowledgeViewSet, basename="knowledge")

urlpatterns: list[URLPattern | URLResolver] = [*router.urls]
urlpatterns += [
    re_path(r"^knowledge/import/?$", KnowledgeImportView.as_view(), name="knowledge-import"),
    re_path(r"^knowledge/export/?$", KnowledgeExportView.as_view(), name="knowledge-export"),
]
