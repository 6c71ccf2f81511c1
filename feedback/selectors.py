"""Reads of the feedback app: the tenant's records and learning items, and the counters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar
from uuid import UUID

from django.db.models import Count, Model, Q, QuerySet, Sum
from django.utils import timezone

from conversations.models import Conversation, Tenant
from convo.errors import NotFound
from feedback.models import (
    THUMBS_UP,
    Feedback,
    FeedbackKind,
    KnowledgeEntry,
    KnowledgeLookupDay,
    LearningItem,
    LearningStatus,
    OwnerCorrection,
)

# Lists page newest first on these keys (the last one unique, as keyset_page needs).
RECORD_ORDERING = ("-created_at", "-id")
# The review queue: oldest first, so the longest-waiting item is reviewed first.
LEARNING_ORDERING = ("created_at", "id")
# Knowledge entries: most recently changed first.
KNOWLEDGE_ORDERING = ("-updated_at", "-id")

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
    knowledge_entries: int
    knowledge_active: int
    lookups: LookupCounts


@dataclass(frozen=True)
class LookupCounts:
    days: int
    answered: int
    suggested: int
    unmatched: int

    @property
    def hit_rate(self) -> float | None:
        total = self.answered + self.suggested + self.unmatched
        return self.answered / total if total else None


def feedback_stats(*, tenant: Tenant | None, days: int = 30) -> FeedbackStats:
    """Feedback by rating (1-5), by thumbs and by channel; corrections; the learning queue by
    status; knowledge entries; answer lookups of the last ``days`` days by decision. A few
    grouped queries over the tenant's rows (every tenant's, for staff, when ``tenant`` is None)."""
    scope = {} if tenant is None else {"tenant": tenant}
    ratings = {str(value): 0 for value in range(1, 6)}
    thumbs = {"up": 0, "down": 0}
    rows = list(Feedback.objects.filter(**scope).values("kind", "value").annotate(n=Count("id")).order_by())
    for row in rows:
        if row["kind"] == FeedbackKind.RATING:
            ratings[str(row["value"])] = row["n"]
        else:
            thumbs["up" if row["value"] == THUMBS_UP else "down"] += row["n"]
    by_channel = {
        row["source"]: row["n"]
        for row in Feedback.objects.filter(**scope).values("source").annotate(n=Count("id")).order_by("source")
    }
    knowledge = KnowledgeEntry.objects.filter(**scope).aggregate(
        entries=Count("id"), active=Count("id", filter=Q(active=True))
    )
    queue = dict.fromkeys(LearningStatus.values, 0)
    for by_status in LearningItem.objects.filter(**scope).values("status").annotate(n=Count("id")).order_by():
        queue[by_status["status"]] = by_status["n"]
    return FeedbackStats(
        feedback_total=sum(row["n"] for row in rows),
        ratings=ratings,
        thumbs=thumbs,
        by_channel=by_channel,
        corrections=OwnerCorrection.objects.filter(**scope).count(),
        learning_items=queue,
        knowledge_entries=knowledge["entries"],
        knowledge_active=knowledge["active"],
        lookups=knowledge_lookup_counts(tenant=tenant, days=days),
    )


def knowledge_lookup_counts(*, tenant: Tenant | None, days: int) -> LookupCounts:
    """Answer lookups by decision over the last ``days`` days (UTC, today included), of one
    tenant or (``None``) of all."""
    since = timezone.now().date() - timedelta(days=days - 1)
    scope = {} if tenant is None else {"tenant": tenant}
    sums = KnowledgeLookupDay.objects.filter(**scope, day__gte=since).aggregate(
        answered=Sum("answered", default=0),
        suggested=Sum("suggested", default=0),
        unmatched=Sum("unmatched", default=0),
    )
    return LookupCounts(days=days, answered=sums["answered"], suggested=sums["suggested"], unmatched=sums["unmatched"])


def knowledge_entries_filtered(
    *, entries: QuerySet[KnowledgeEntry], source: str | None, active: bool | None, tag: str | None
) -> QuerySet[KnowledgeEntry]:
    if source is not None:
        entries = entries.filter(source=source)
    if active is not None:
        entries = entries.filter(active=active)
    if tag is not None:
        entries = entries.filter(tags__contains=[tag.strip().lower()])
    return entries
