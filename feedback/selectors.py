"""Reads of the feedback app: the tenant's records and learning items, and the counters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar
from uuid import UUID

from django.db.models import Count, Model, QuerySet

from conversations.models import Conversation, Tenant
from convo.errors import NotFound
from feedback.models import (
    THUMBS_UP,
    Feedback,
    FeedbackKind,
    LearningItem,
    LearningStatus,
    OwnerCorrection,
)

# Lists page newest first on these keys (the last one unique, as keyset_page needs).
RECORD_ORDERING = ("-created_at", "-id")
# The review queue: oldest first, so the longest-waiting item is reviewed first.
LEARNING_ORDERING = ("created_at", "id")

RecordT = TypeVar("RecordT", bound=Model)


def records_of_conversation(
    *, records: QuerySet[RecordT], tenant: Tenant, conversation_id: UUID | None
) -> QuerySet[RecordT]:
    """``records`` (already the tenant's) of one conversation when ``conversation_id`` is given:
    ``NotFound`` naming ``conversation_id`` when the tenant has no such conversation."""
    if conversation_id is None:
        return records
    if not Conversation.objects.filter(pk=conversation_id, tenant=tenant).exists():
        raise NotFound("Conversation not found.", fields={"conversation_id": ["No such conversation."]})
    return records.filter(conversation_id=conversation_id)


def learning_items_filtered(
    *, items: QuerySet[LearningItem], status: str | None, source: str | None
) -> QuerySet[LearningItem]:
    if status is not None:
        items = items.filter(status=status)
    if source is not None:
        items = items.filter(source=source)
    return items


@dataclass(frozen=True)
class FeedbackStats:
    feedback_total: int
    ratings: dict[str, int]
    thumbs: dict[str, int]
    by_channel: dict[str, int]
    corrections: int
    learning_items: dict[str, int]


def feedback_stats(*, tenant: Tenant) -> FeedbackStats:
    """Feedback by rating (1-5), by thumbs and by channel; corrections; the learning queue by
    status. Four grouped queries over the tenant's rows."""
    ratings = {str(value): 0 for value in range(1, 6)}
    thumbs = {"up": 0, "down": 0}
    rows = list(Feedback.objects.filter(tenant=tenant).values("kind", "value").annotate(n=Count("id")).order_by())
    for row in rows:
        if row["kind"] == FeedbackKind.RATING:
            ratings[str(row["value"])] = row["n"]
        else:
            thumbs["up" if row["value"] == THUMBS_UP else "down"] += row["n"]
    by_channel = {
        row["source"]: row["n"]
        for row in Feedback.objects.filter(tenant=tenant).values("source").annotate(n=Count("id")).order_by("source")
    }
    queue = dict.fromkeys(LearningStatus.values, 0)
    for by_status in LearningItem.objects.filter(tenant=tenant).values("status").annotate(n=Count("id")).order_by():
        queue[by_status["status"]] = by_status["n"]
    return FeedbackStats(
        feedback_total=sum(row["n"] for row in rows),
        ratings=ratings,
        thumbs=thumbs,
        by_channel=by_channel,
        corrections=OwnerCorrection.objects.filter(tenant=tenant).count(),
        learning_items=queue,
    )
