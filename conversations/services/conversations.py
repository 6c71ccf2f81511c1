"""Changing stored conversations: update, upsert by id, soft delete."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db import IntegrityError, connection, transaction
from django.db.models.functions import Now
from psycopg.types.json import Jsonb

from clustering.services.moderation import clusters_forget_conversation
from conversations.models import Conversation, EmbeddingState, Tenant
from conversations.payloads import ConversationUpdateIn, ConversationUpsertIn
from conversations.search_cache import search_cache_invalidate
from conversations.services.embedding_kick import embedding_kick_on_commit
from convo.errors import Conflict, NotFound

# Fields whose change means the stored embedding no longer describes the conversation.
_EMBEDDED_FIELDS = {"summary", "transcript"}
_FIELD_NAMES = {"user_id": "external_user_id"}

_TEXT_CHANGED = "(c.summary IS DISTINCT FROM EXCLUDED.summary OR c.transcript IS DISTINCT FROM EXCLUDED.transcript)"

_UPSERT = f"""
INSERT INTO {Conversation._meta.db_table} AS c
    (id, tenant_id, external_id, external_user_id, channel, session_id, status, summary, transcript,
     metadata, embedding_state, ingest_fingerprint)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'pending', '')
ON CONFLICT (id) DO UPDATE SET
    external_id = EXCLUDED.external_id, external_user_id = EXCLUDED.external_user_id,
    channel = EXCLUDED.channel, session_id = EXCLUDED.session_id, status = EXCLUDED.status,
    summary = EXCLUDED.summary, transcript = EXCLUDED.transcript, metadata = EXCLUDED.metadata,
    embedding_state = CASE WHEN {_TEXT_CHANGED} THEN 'pending' ELSE c.embedding_state END,
    embedding_attempts = CASE WHEN {_TEXT_CHANGED} THEN 0 ELSE c.embedding_attempts END,
    embedding_claimed_at = CASE WHEN {_TEXT_CHANGED} THEN NULL ELSE c.embedding_claimed_at END
WHERE c.tenant_id = EXCLUDED.tenant_id AND c.deleted_at IS NULL
RETURNING (xmax = 0) AS created
"""


def conversation_upsert(
    *, tenant: Tenant, conversation_id: UUID, payload: ConversationUpsertIn
) -> tuple[Conversation, bool]:
    """Seed 001's ``upsert_conversation``: create the conversation under ``conversation_id`` or
    replace its writable fields. Returns it with ``created``. An id that belongs to another tenant,
    or to a deleted conversation, is ``NotFound`` (never overwritten, never revealed)."""
    # The user it belonged to before (if any) must stop finding it in cached searches too.
    previous_users = list(
        Conversation.objects.filter(pk=conversation_id, tenant=tenant).values_list("external_user_id", flat=True)
    )
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            params: list[Any] = [
                conversation_id,
                tenant.pk,
                payload.external_id,
                payload.user_id,
                payload.channel.value,
                payload.session_id,
                payload.status.value,
                payload.summary,
                payload.transcript,
                Jsonb(payload.metadata),
            ]
            cursor.execute(_UPSERT, params)
            row = cursor.fetchone()
    except IntegrityError as exc:
        raise _conflict(exc) from None
    if row is None:
        raise NotFound("No such conversation.")
    embedding_kick_on_commit()
    conversation = Conversation.objects.get(pk=conversation_id)
    _forget_searches(conversation, *previous_users)
    return conversation, bool(row[0])


def conversation_update(*, conversation: Conversation, changes: ConversationUpdateIn) -> Conversation:
    """Apply the fields set in ``changes`` (PATCH). Re-queues embedding when text changed."""
    values: dict[str, Any] = {
        _FIELD_NAMES.get(name, name): value for name, value in changes.model_dump(exclude_unset=True).items()
    }
    changed = [field for field, value in values.items() if getattr(conversation, field) != value]
    if not changed:
        return conversation
    previous_user = conversation.external_user_id
    for field in changed:
        setattr(conversation, field, values[field])
    text_changed = bool(_EMBEDDED_FIELDS.intersection(changed))
    if text_changed:
        # Back to the queue; a claim in flight will find its claim time gone and not mark it done.
        conversation.embedding_state = EmbeddingState.PENDING
        conversation.embedding_attempts = 0
        conversation.embedding_claimed_at = None
        changed += ["embedding_state", "embedding_attempts", "embedding_claimed_at"]
    try:
        with transaction.atomic():
            conversation.save(update_fields=changed)
    except IntegrityError as exc:
        raise _conflict(exc) from None
    conversation.refresh_from_db(fields=["updated_at"])
    if text_changed:
        embedding_kick_on_commit()
    _forget_searches(conversation, previous_user)  # status, channel or user changed what a search finds
    return conversation


@transaction.atomic
def conversation_soft_delete(*, conversation: Conversation) -> None:
    """Hide the conversation and its messages from every read; the rows stay for audit."""
    with transaction.atomic():
        hidden = Conversation.objects.filter(pk=conversation.pk, deleted_at__isnull=True).update(deleted_at=Now())
        if hidden:
            clusters_forget_conversation(conversation=conversation)
    _forget_searches(conversation)


def _forget_searches(conversation: Conversation, *other_users: str) -> None:
    tenant_id, users = conversation.tenant_id, {conversation.external_user_id, *other_users}
    transaction.on_commit(lambda: search_cache_invalidate(tenant_id=tenant_id, user_ids=users), robust=True)


def _conflict(exc: IntegrityError) -> Conflict:
    constraint = getattr(getattr(exc.__cause__, "diag", None), "constraint_name", "") or ""
    if constraint == "conv_unique_active_session":
        return Conflict(
            "This user already has an active conversation with this session_id.",
            fields={"session_id": ["An active conversation with this user_id and session_id exists."]},
        )
    if constraint == "conv_unique_external_id":
        return Conflict("Another conversation has this external_id.", fields={"external_id": ["Already used."]})
    raise exc
