"""The staff admin of feedback: the records, read-only, and the learning queue's review.

Records (feedback, corrections, analytics, transcripts) come from the chat backend through the
API and are never added, changed or deleted here. Learning items are reviewed through the same
services as the API (ARCHITECTURE.md, decision 7): the bulk "approve" and "reject" actions call
``learning_item_approve`` / ``learning_item_reject`` once per item, and a refusal (an item already
reviewed, or one with no proposed answer) is reported, never a 500. An item's page shows the
original and the proposed answer side by side, with the differences marked.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.safestring import mark_safe
from django.utils.text import Truncator

from clustering.services.moderation import Actor
from conversations.admin import BigTableAdmin
from convo.errors import ServiceError
from feedback.models import (
    Feedback,
    LearningItem,
    OwnerCorrection,
    ResponseAnalytics,
    VoiceTranscript,
)
from feedback.services import learning_item_approve, learning_item_reject

# Width at which the side-by-side diff wraps its lines.
DIFF_WRAP_COLUMNS = 70


class _ReadOnlyAdmin(BigTableAdmin):
    """Records as the chat backend sent them: viewable, never edited here."""

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Feedback)
class FeedbackAdmin(_ReadOnlyAdmin):
    list_display = ("id", "__str__", "source", "tenant", "conversation_id", "created_at")
    list_filter = ("tenant", "kind", "value", "source")


@admin.register(OwnerCorrection)
class OwnerCorrectionAdmin(_ReadOnlyAdmin):
    list_display = ("id", "corrected", "corrected_by", "tenant", "created_at")
    list_filter = ("tenant",)
    search_fields = ("corrected_text", "corrected_by")
    list_defer = ("original_response", "reason")

    @admin.display(description="corrected text")
    def corrected(self, obj: OwnerCorrection) -> str:
        return Truncator(obj.corrected_text).chars(80)


@admin.register(ResponseAnalytics)
class ResponseAnalyticsAdmin(_ReadOnlyAdmin):
    list_display = ("id", "model", "latency_ms", "prompt_tokens", "completion_tokens", "cost", "from_cache", "tenant")
    list_filter = ("tenant", "from_cache", "model")


@admin.register(VoiceTranscript)
class VoiceTranscriptAdmin(_ReadOnlyAdmin):
    list_display = ("id", "language", "duration_seconds", "tenant", "created_at")
    list_filter = ("tenant", "language")
    list_defer = ("text",)


def answer_diff(original: str, proposed: str) -> str:
    """An HTML table with ``original`` and ``proposed`` side by side, changes marked.
    ``difflib.HtmlDiff`` escapes ``&``, ``<`` and ``>`` of the texts, so tenant text never
    becomes markup (tests/feedback/test_admin.py checks it)."""
    table = difflib.HtmlDiff(wrapcolumn=DIFF_WRAP_COLUMNS).make_table(
        original.splitlines() or [""],
        proposed.splitlines() or [""],
        fromdesc="original answer",
        todesc="proposed answer",
    )
    return mark_safe(table)  # noqa: S308 the texts inside are escaped by HtmlDiff


_ITEM_FIELDS = (
    "id",
    "tenant",
    "source",
    "status",
    "question",
    "diff",
    "original_answer",
    "proposed_answer",
    "approved_answer",
    "correction",
    "feedback",
    "cluster",
    "cluster_answer_version",
    "reviewed_by",
    "reviewed_at",
    "review_note",
    "created_at",
)


@admin.register(LearningItem)
class LearningItemAdmin(BigTableAdmin):
    """The review queue: pending items first come oldest first under the "pending" filter."""

    list_display = ("short_question", "source", "status", "tenant", "created_at", "reviewed_by")
    list_filter = ("status", "source", "tenant")
    search_fields = ("question", "proposed_answer")
    list_defer = ("original_answer", "approved_answer", "review_note")
    fields = _ITEM_FIELDS
    readonly_fields = _ITEM_FIELDS
    actions = ["approve_selected", "reject_selected"]

    def get_ordering(self, request: HttpRequest) -> tuple[str, ...]:
        return ("created_at", "id")  # the (tenant, status, created_at, id) queue order

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: LearningItem | None = None) -> bool:
        return False  # reviewing goes through the actions (services), never a form save

    def has_delete_permission(self, request: HttpRequest, obj: LearningItem | None = None) -> bool:
        return False

    def has_review_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("feedback.change_learningitem")

    @admin.display(description="question")
    def short_question(self, obj: LearningItem) -> str:
        return Truncator(obj.question or "(no question)").chars(80)

    @admin.display(description="original → proposed")
    def diff(self, obj: LearningItem) -> str:
        return answer_diff(obj.original_answer, obj.proposed_answer)

    @admin.action(description="Approve selected items (with their proposed answers)", permissions=["review"])
    def approve_selected(self, request: HttpRequest, queryset: QuerySet[LearningItem]) -> None:
        self._each(request, queryset, learning_item_approve, "Approved")

    @admin.action(description="Reject selected items", permissions=["review"])
    def reject_selected(self, request: HttpRequest, queryset: QuerySet[LearningItem]) -> None:
        self._each(request, queryset, learning_item_reject, "Rejected")

    def _each(
        self,
        request: HttpRequest,
        queryset: QuerySet[LearningItem],
        service: Callable[..., LearningItem],
        verb: str,
    ) -> None:
        """One service call (one transaction) per item; a refusal is reported and the rest go on."""
        actor = Actor.for_user(cast(AbstractBaseUser, request.user))
        done = 0
        refused: list[str] = []
        for item in queryset.select_related(None).order_by("created_at", "id").iterator():
            try:
                service(item=item, actor=actor)
            except ServiceError as exc:
                details = [d for errors in (exc.fields or {}).values() for d in errors]
                refused.append(f"{item}: {' '.join([exc.message, *details])}")
                continue
            done += 1
        self.message_user(request, f"{verb} {done} item(s).", messages.SUCCESS)
        if refused:
            more = f" (and {len(refused) - 5} more)" if len(refused) > 5 else ""
            self.message_user(request, f"Not done: {' · '.join(refused[:5])}{more}", messages.ERROR)
