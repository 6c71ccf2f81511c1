"""Writes of the knowledge base: entries, their history, and applying approved learning items.

Every change to an entry bumps its ``version`` and writes a ``KnowledgeEntryVersion`` with who
made it and why, in the same transaction, so the history is complete whatever path changed it
(the API, the admin, an import, a review). A changed question sends the entry back to the
embedding queue (``embedding_state = pending``) and wakes the worker once the change commits;
until the worker is done the entry is searched with its previous vector, and an entry never
embedded is found by full-text search only.

Applying a learning item (``learning_item_apply``, called by ``learning_item_approve``) creates or
updates the entry that answers the item's question:

- an answered cluster's items all update one entry, keyed ``cluster:<id>``, so re-answering a
  cluster replaces its answer instead of adding a second entry;
- any other item updates the tenant's entry with the same question (compared case-insensitively,
  whitespace collapsed), or creates one.

An item with no question (a low rating of a conversation's first response) cannot be applied: it
stays ``approved`` for a reviewer to turn into an entry by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from conversations.models import EmbeddingState, Tenant
from conversations.services.embedding_cache import text_normalize
from conversations.services.embedding_kick import embedding_kick_on_commit
from convo.errors import NotFound, ServiceError
from feedback.models import (
    KnowledgeEntry,
    KnowledgeEntryVersion,
    KnowledgeLookupDay,
    KnowledgeSource,
    LearningItem,
    LearningSource,
    LearningStatus,
    LookupDecision,
)

if TYPE_CHECKING:
    from clustering.services.moderation import Actor

_ITEM_SOURCES = {
    LearningSource.CORRECTION: KnowledgeSource.CORRECTION,
    LearningSource.LOW_RATING: KnowledgeSource.LOW_RATING,
    LearningSource.ANSWERED_CLUSTER: KnowledgeSource.ANSWERED_CLUSTER,
}


@dataclass(frozen=True)
class EntryFields:
    """An entry's content, checked (``knowledge_fields_clean``) before it is written."""

    question: str
    answer: str
    tags: tuple[str, ...] = ()


def knowledge_fields_clean(*, question: str, answer: str, tags: Sequence[str] = ()) -> EntryFields:
    """Trimmed, non-blank and within the limits, or a ``ServiceError`` naming each bad field.
    Tags are trimmed, lower-cased and deduplicated in order."""
    errors: dict[str, list[str]] = {}
    question, answer = question.strip(), answer.strip()
    for field, text, limit in (
        ("question", question, int(settings.KNOWLEDGE_MAX_QUESTION_CHARS)),
        ("answer", answer, int(settings.FEEDBACK_MAX_ANSWER_CHARS)),
    ):
        if not text:
            errors[field] = ["This field may not be blank."]
        elif "\x00" in text:  # PostgreSQL text cannot store it
            errors[field] = ["This field may not contain NUL characters."]
        elif len(text) > limit:
            errors[field] = [f"Ensure this field has at most {limit} characters."]
    cleaned = tuple(dict.fromkeys(tag.strip().lower() for tag in tags if tag.strip()))
    tag_chars = int(settings.KNOWLEDGE_MAX_TAG_CHARS)
    if len(cleaned) > int(settings.KNOWLEDGE_MAX_TAGS):
        errors["tags"] = [f"Ensure there are at most {settings.KNOWLEDGE_MAX_TAGS} tags."]
    elif any(len(tag) > tag_chars for tag in cleaned):
        errors["tags"] = [f"Ensure each tag has at most {tag_chars} characters."]
    elif any("\x00" in tag for tag in cleaned):
        errors["tags"] = ["A tag may not contain NUL characters."]
    if errors:
        raise ServiceError("The knowledge entry is not valid.", fields=errors)
    return EntryFields(question=question, answer=answer, tags=cleaned)


@transaction.atomic
def knowledge_entry_create(
    *,
    tenant: Tenant,
    fields: EntryFields,
    actor: Actor,
    source: str = KnowledgeSource.MANUAL,
    key: str = "",
    active: bool = True,
    change: str = "created",
    learning_item: LearningItem | None = None,
) -> KnowledgeEntry:
    """A new entry (version 1, pending embedding); the worker is woken when it commits."""
    key = key.strip()
    if key and KnowledgeEntry.objects.filter(tenant=tenant, key=key).exists():
        raise ServiceError("The key is taken.", fields={"key": [f"This tenant already has an entry with key {key!r}."]})
    entry = KnowledgeEntry.objects.create(
        tenant=tenant,
        key=key,
        question=fields.question,
        answer=fields.answer,
        tags=list(fields.tags),
        source=source,
        active=active,
        updated_by=actor.label[:200],
    )
    _version_write(entry, actor=actor, change=change, learning_item=learning_item)
    embedding_kick_on_commit()
    return entry


@transaction.atomic
def knowledge_entry_update(
    *,
    entry: KnowledgeEntry,
    actor: Actor,
    question: str | None = None,
    answer: str | None = None,
    tags: Sequence[str] | None = None,
    active: bool | None = None,
    change: str = "edited",
    learning_item: LearningItem | None = None,
) -> KnowledgeEntry:
    """Change what is given; a change that changes nothing writes nothing (no new version).
    The row is locked, so two concurrent edits make two versions, never one lost update. An entry
    deleted since the caller read it is ``NotFound``."""
    current = KnowledgeEntry.objects.select_for_update().filter(pk=entry.pk).first()
    if current is None:
        raise NotFound("No such knowledge entry.")
    fields = knowledge_fields_clean(
        question=current.question if question is None else question,
        answer=current.answer if answer is None else answer,
        tags=current.tags if tags is None else tags,
    )
    new_active = current.active if active is None else active
    if (fields.question, fields.answer, list(fields.tags), new_active) == (
        current.question,
        current.answer,
        list(current.tags),
        current.active,
    ):
        return current
    requeue = fields.question != current.question
    current.question, current.answer, current.tags, current.active = (
        fields.question,
        fields.answer,
        list(fields.tags),
        new_active,
    )
    current.version += 1
    current.updated_by = actor.label[:200]
    current.updated_at = timezone.now()
    update_fields = ["question", "answer", "tags", "active", "version", "updated_by", "updated_at"]
    if requeue:
        current.embedding_state, current.embedding_attempts, current.embedding_error = EmbeddingState.PENDING, 0, ""
        current.embedding_claimed_at = None
        update_fields += ["embedding_state", "embedding_attempts", "embedding_error", "embedding_claimed_at"]
    current.save(update_fields=update_fields)
    _version_write(current, actor=actor, change=change, learning_item=learning_item)
    if requeue:
        embedding_kick_on_commit()
    return current


@transaction.atomic
def knowledge_entry_delete(*, entry: KnowledgeEntry) -> None:
    """Remove the entry, its history and its vectors (to keep one but never return it, make it
    inactive instead). Learning items that made it keep their record, without the link."""
    KnowledgeEntry.objects.filter(pk=entry.pk).delete()


@transaction.atomic
def learning_item_apply(*, item: LearningItem, actor: Actor) -> KnowledgeEntry | None:
    """Take an approved item into the knowledge base and mark it ``applied``; returns the entry,
    or None (the item stays ``approved``) when it has no question to answer."""
    current = LearningItem.objects.select_for_update().get(pk=item.pk)
    if current.status != LearningStatus.APPROVED:
        raise ServiceError(f"Only approved items can be applied; this one is {current.status}.")
    if not current.question.strip():
        return None
    tenant = Tenant.objects.get(pk=current.tenant_id)
    fields = knowledge_fields_clean(
        question=current.question[: settings.KNOWLEDGE_MAX_QUESTION_CHARS], answer=current.approved_answer
    )
    change = f"applied learning item {current.pk}"
    key = f"cluster:{current.cluster_id}" if current.cluster_id is not None else ""
    existing = _entry_for(tenant, key=key, question=fields.question)
    entry: KnowledgeEntry | None = None
    if existing is not None:
        try:
            # A cluster's entry follows the cluster's representative question; another entry keeps
            # its own wording (the item's question matched it already).
            entry = knowledge_entry_update(
                entry=existing,
                actor=actor,
                question=fields.question if key else None,
                answer=fields.answer,
                active=True,
                change=change,
                learning_item=current,
            )
        except NotFound:
            entry = None  # deleted since it was found: the item makes a new one
    if entry is None:
        entry = knowledge_entry_create(
            tenant=tenant,
            fields=fields,
            actor=actor,
            source=_ITEM_SOURCES[LearningSource(current.source)],
            key=key,
            change=change,
            learning_item=current,
        )
    current.status, current.entry = LearningStatus.APPLIED, entry
    current.save(update_fields=["status", "entry"])
    return entry


def knowledge_lookup_count(*, tenant: Tenant, decision: str) -> None:
    """Count one answer lookup under the tenant's row for today (UTC): one upsert statement, so a
    lookup holds the row's lock only for the length of that statement."""
    counts = {"answered": 0, "suggested": 0, "unmatched": 0}
    column = {
        LookupDecision.ANSWER: "answered",
        LookupDecision.SUGGEST: "suggested",
        LookupDecision.NO_MATCH: "unmatched",
    }[LookupDecision(decision)]
    counts[column] = 1
    table = KnowledgeLookupDay._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (tenant_id, day, answered, suggested, unmatched) "
            "VALUES (%s, (now() AT TIME ZONE 'UTC')::date, %s, %s, %s) "
            f"ON CONFLICT (tenant_id, day) DO UPDATE SET {column} = {table}.{column} + 1",
            [tenant.pk, counts["answered"], counts["suggested"], counts["unmatched"]],
        )


# --- internals -----------------------------------------------------------------------------------


def _entry_for(tenant: Tenant, *, key: str, question: str) -> KnowledgeEntry | None:
    if key:
        return KnowledgeEntry.objects.filter(tenant=tenant, key=key).first()
    # Few entries per tenant and one approval at a time: a scan of the tenant's rows is cheap,
    # and saves an index nobody else would use.
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {KnowledgeEntry._meta.db_table} WHERE tenant_id = %s "
            "AND lower(regexp_replace(btrim(question), '\\s+', ' ', 'g')) = %s ORDER BY created_at LIMIT 1",
            [tenant.pk, text_normalize(question).lower()],
        )
        row = cursor.fetchone()
    # .first(): the entry may be deleted between the two reads (then there is none to update).
    return KnowledgeEntry.objects.filter(pk=row[0]).first() if row else None


def _version_write(entry: KnowledgeEntry, *, actor: Actor, change: str, learning_item: LearningItem | None) -> None:
    KnowledgeEntryVersion.objects.create(
        entry=entry,
        version=entry.version,
        question=entry.question,
        answer=entry.answer,
        tags=list(entry.tags),
        active=entry.active,
        changed_by=actor.label[:200],
        change=change[:200],
        learning_item=learning_item,
    )
