"""Ingest: storing conversations and inbound messages durably, in one write statement per batch.

Rows are written with ``INSERT … SELECT FROM json_to_recordset(<one JSON array of rows>) ON
CONFLICT DO NOTHING RETURNING id``: a single statement for any number of rows (conversations and
their messages together, as two data-modifying CTEs), which, unlike COPY, lets a replayed
``external_id`` fall out quietly instead of failing the batch. The rows travel as one JSON
document per table, written by orjson in C: an array per column made psycopg adapt every value
in Python, and PostgreSQL took longer to unnest them than to parse the JSON. Ids are UUIDv7 made
here, so every item's id is known before the statement runs. Each function commits once; a 202
is only sent after that commit, so an acknowledged item is a committed ``pending`` row
(ARCHITECTURE.md, decision 1).

A batch is never all-or-nothing: each item ends ``Accepted`` or ``Rejected`` with the field at
fault, and the good items are stored whatever happens to the bad ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
from django.db import transaction

from conversations.models import Conversation, EmbeddingState, Message, Tenant
from conversations.payloads import ConversationIn, InboundMessageIn, MessageIn
from conversations.services.admission import ingest_admission_check
from conversations.services.embedding_kick import embedding_kick_on_commit
from conversations.services.results import Accepted, ItemResult, Rejected
from convo.db import retry_on_deadlock, server_bound_cursor
from convo.errors import Conflict
from convo.ids import uuid7
from convo.monitoring.prometheus import metrics_ingested_count
from convo.monitoring.timings import timed

_CONVERSATIONS = Conversation._meta.db_table
_MESSAGES = Message._meta.db_table


def _columns(fields: Sequence[tuple[str, str]]) -> str:
    return ", ".join(name for name, _ in fields)


def _recordset(alias: str, fields: Sequence[tuple[str, str]]) -> str:
    """Rows from one JSON array of objects (one parameter), typed by ``fields``."""
    return f"json_to_recordset(%b::json) AS {alias}({', '.join(f'{name} {kind}' for name, kind in fields)})"


# The fields of a stored message, as a record of _message_record carries them.
_MESSAGE_FIELDS = (
    ("id", "uuid"),
    ("tenant_id", "bigint"),
    ("conversation_id", "uuid"),
    ("role", "text"),
    ("text", "text"),
    ("sender_name", "text"),
    ("sender_avatar_url", "text"),
    ("external_id", "text"),
    ("raw_payload", "jsonb"),
    ("sent_at", "timestamptz"),
    ("embedding_state", "text"),
)
_MESSAGE_COLUMNS = _columns(_MESSAGE_FIELDS)

# The fields of a new conversation (_conversation_record); the last two give its last_message_at.
_CONVERSATION_FIELDS = (
    ("id", "uuid"),
    ("tenant_id", "bigint"),
    ("external_id", "text"),
    ("external_user_id", "text"),
    ("channel", "text"),
    ("session_id", "text"),
    ("status", "text"),
    ("summary", "text"),
    ("transcript", "text"),
    ("metadata", "jsonb"),
    ("embedding_state", "text"),
    ("ingest_fingerprint", "text"),
    ("newest_sent_at", "timestamptz"),
    ("unsent", "boolean"),
)

# Conversations and their messages in one statement (one round trip). A conversation that falls
# out (a replayed external_id, a taken session) takes its messages with it. Its last_message_at
# is set here to what the messages trigger would compute (messages' created_at is this statement's
# timestamp too), so the trigger finds nothing to update: updating each new row would write it
# twice, with every index entry, in the same transaction.
_INSERT_CONVERSATIONS_WITH_MESSAGES = f"""
WITH conversations AS (
    INSERT INTO {_CONVERSATIONS} ({_columns(_CONVERSATION_FIELDS[:-2])}, last_message_at)
    SELECT {_columns(_CONVERSATION_FIELDS[:-2])},
           GREATEST(newest_sent_at, CASE WHEN unsent THEN statement_timestamp() END)
    FROM {_recordset("c", _CONVERSATION_FIELDS)}
    ON CONFLICT DO NOTHING
    RETURNING id
), messages AS (
    INSERT INTO {_MESSAGES} ({_MESSAGE_COLUMNS})
    SELECT * FROM {_recordset("m", _MESSAGE_FIELDS)}
    WHERE m.conversation_id IN (SELECT id FROM conversations)
    ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT id, true FROM conversations UNION ALL SELECT id, false FROM messages
"""

_SESSION_FIELDS = (("id", "uuid"), ("user_id", "text"), ("session_id", "text"), ("channel", "text"))

# Inbound messages in one statement: the active conversation of each (user, session) is continued
# or started (the DO UPDATE is what makes RETURNING give the id of one that already existed), and
# each message is stored in its given conversation or in its session's.
_INGEST_MESSAGES = f"""
WITH sessions AS (
    INSERT INTO {_CONVERSATIONS} (id, tenant_id, external_user_id, session_id, channel, status, summary,
                                  transcript, metadata, embedding_state, ingest_fingerprint)
    SELECT id, %b::bigint, user_id, session_id, channel, 'active', '', '', '{{}}'::jsonb, 'pending', ''
    FROM {_recordset("s", _SESSION_FIELDS)}
    ON CONFLICT (tenant_id, external_user_id, session_id) WHERE status = 'active' AND deleted_at IS NULL
    DO UPDATE SET updated_at = now()
    RETURNING id, external_user_id, session_id
), messages AS (
    INSERT INTO {_MESSAGES} ({_MESSAGE_COLUMNS})
    SELECT m.id, m.tenant_id, COALESCE(m.conversation_id, s.id), m.role, m.text, m.sender_name,
           m.sender_avatar_url, m.external_id, m.raw_payload, m.sent_at, m.embedding_state
    FROM {_recordset("m", (*_MESSAGE_FIELDS, ("user_id", "text"), ("session_id", "text")))}
    LEFT JOIN sessions AS s
           ON m.conversation_id IS NULL AND s.external_user_id = m.user_id AND s.session_id = m.session_id
    ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT id, external_user_id, session_id FROM sessions
UNION ALL
SELECT id, NULL, NULL FROM messages
"""

# The external ids of a batch already stored, conversations' and messages' (the unique indexes on
# (tenant_id, external_id) answer both halves).
_STORED_EXTERNAL_IDS = f"""
SELECT external_id, true FROM {_CONVERSATIONS} WHERE tenant_id = %s AND external_id = ANY(%b::text[])
UNION ALL
SELECT external_id, false FROM {_MESSAGES} WHERE tenant_id = %s AND external_id = ANY(%b::text[])
"""

_PENDING = EmbeddingState.PENDING.value


@timed("batch_insert")
@retry_on_deadlock()
@transaction.atomic
def conversation_create_batch(*, tenant: Tenant, payloads: Sequence[ConversationIn]) -> list[ItemResult]:
    """Store conversations (each with its messages) and return one result per payload, in order.

    A payload whose ``external_id`` is already stored is a replay: it gets the stored id when its
    body is the same, and a conflict naming ``external_id`` when it differs. A payload whose
    (user, session) already has an active conversation, or whose message ``external_id`` is taken,
    is rejected naming that field.
    """
    ingest_admission_check()
    results: list[ItemResult | None] = [None] * len(payloads)
    fingerprints = [payload.fingerprint() for payload in payloads]
    # A payload whose own external_id is stored is a replay (or a conflict): it is answered by
    # _explain_conversation_conflicts, and its messages must not be judged as clashes. A single
    # payload skips the look-up (a round trip of every acknowledgement): the insert answers the
    # same questions, a stored conversation by falling out and a taken message external_id by
    # _withdraw, and with one payload no other item's fate depends on the order of the two.
    stored_conversations, taken_message_ids = (
        _stored_external_ids(tenant, payloads) if len(payloads) > 1 else (set(), set())
    )

    rows: list[tuple[int, UUID, ConversationIn]] = []
    for index, payload in enumerate(payloads):
        if payload.external_id not in stored_conversations:
            clash = _message_external_id_clash(payload.messages, taken_message_ids)
            if clash is not None:
                results[index] = clash
                continue
        rows.append((index, uuid7(), payload))

    message_ids_of: dict[UUID, tuple[UUID, ...]] = {}
    message_rows: list[tuple[UUID, MessageIn, UUID]] = []
    for _, conversation_id, payload in rows:
        message_ids = message_ids_of[conversation_id] = tuple(uuid7() for _ in payload.messages)
        message_rows.extend(zip(message_ids, payload.messages, [conversation_id] * len(message_ids), strict=True))
    inserted, stored_messages = _insert_conversations_with_messages(tenant, rows, fingerprints, message_rows)
    for index, conversation_id, _ in rows:
        if conversation_id not in inserted:
            continue
        message_ids = message_ids_of[conversation_id]
        if all(message_id in stored_messages for message_id in message_ids):
            results[index] = Accepted(id=conversation_id, message_ids=message_ids)
        else:
            # A concurrent request stored one of its message external_ids after the check above:
            # take the conversation back out rather than acknowledge messages that are not stored.
            results[index] = _withdraw(conversation_id, payloads[index], stored_messages, message_ids)

    if any(isinstance(result, Accepted) for result in results):
        embedding_kick_on_commit()
        _count_on_commit(conversations=len(inserted), messages=len(stored_messages))
    missing = [(index, payload) for index, conversation_id, payload in rows if conversation_id not in inserted]
    if missing:
        for index, result in _explain_conversation_conflicts(tenant, missing, fingerprints).items():
            results[index] = result
    return [result for result in results if result is not None]


def conversation_create(*, tenant: Tenant, payload: ConversationIn) -> Accepted:
    """Store one conversation. Raises ``Conflict`` when the batch path rejects it."""
    (result,) = conversation_create_batch(tenant=tenant, payloads=[payload])
    if isinstance(result, Rejected):
        raise Conflict(result.message, fields=result.fields)
    return result


@timed("batch_insert")
@retry_on_deadlock()
@transaction.atomic
def message_ingest_batch(
    *, tenant: Tenant, payloads: Sequence[InboundMessageIn], admission: bool = True
) -> list[ItemResult]:
    """Store inbound messages, each attached to its ``conversation_id`` or to the active
    conversation of its (user, session), which is started when there is none.

    A message whose ``external_id`` is already stored is a replay and gets the stored id, unless
    its text differs (a conflict naming ``external_id``). An unknown or deleted
    ``conversation_id`` rejects that item with ``not_found``.
    """
    if admission:
        ingest_admission_check()
    results: list[ItemResult | None] = [None] * len(payloads)

    explicit = {payload.conversation_id for payload in payloads if payload.conversation_id is not None}
    live = _live_conversation_ids(tenant, explicit)

    # (message id, payload, its conversation: None until the statement gives its session's)
    message_rows: list[tuple[UUID, InboundMessageIn, UUID | None]] = []
    positions: dict[UUID, int] = {}
    for index, payload in enumerate(payloads):
        if payload.conversation_id is not None and payload.conversation_id not in live:
            results[index] = Rejected("not_found", "No such conversation.", {"conversation_id": ["Not found."]})
            continue
        message_id = uuid7()
        positions[message_id] = index
        message_rows.append((message_id, payload, payload.conversation_id))

    sessions, inserted = _ingest_messages(tenant, message_rows)
    if inserted:
        embedding_kick_on_commit()
        _count_on_commit(conversations=0, messages=len(inserted))
    replays: list[tuple[int, MessageIn]] = []
    for message_id, message, conversation_id in message_rows:
        index = positions[message_id]
        if message_id in inserted:
            session = (message.user_id or "", message.session_id or "")
            results[index] = Accepted(id=message_id, conversation_id=conversation_id or sessions[session])
        else:
            replays.append((index, message))
    if replays:
        for index, result in _explain_message_replays(tenant, replays).items():
            results[index] = result
    return [result for result in results if result is not None]


def message_ingest(*, tenant: Tenant, payload: InboundMessageIn) -> Accepted:
    """Store one inbound message; raises ``Conflict`` or ``NotFound`` when the batch path rejects it."""
    from convo.errors import NotFound

    (result,) = message_ingest_batch(tenant=tenant, payloads=[payload])
    if isinstance(result, Rejected):
        error = NotFound if result.code == "not_found" else Conflict
        raise error(result.message, fields=result.fields)
    return result


def conversation_messages_add(
    *, tenant: Tenant, conversation_id: UUID, payloads: Sequence[MessageIn]
) -> list[ItemResult]:
    """Append messages to one conversation (same path as inbound messages)."""
    inbound = [
        InboundMessageIn.model_construct(**dict(payload), conversation_id=conversation_id) for payload in payloads
    ]
    return message_ingest_batch(tenant=tenant, payloads=inbound)


def _count_on_commit(*, conversations: int, messages: int) -> None:
    """Count stored items for Prometheus once they are committed (acknowledged)."""

    def count() -> None:
        metrics_ingested_count(kind="conversation", count=conversations)
        metrics_ingested_count(kind="message", count=messages)

    transaction.on_commit(count)


# --- storage ---------------------------------------------------------------------------------


def _insert_conversations_with_messages(
    tenant: Tenant,
    rows: Sequence[tuple[int, UUID, ConversationIn]],
    fingerprints: Sequence[str],
    message_rows: Sequence[tuple[UUID, MessageIn, UUID]],
) -> tuple[set[UUID], set[UUID]]:
    """Returns the ids of the conversations and of the messages stored."""
    if not rows:
        return set(), set()
    conversations = [
        _conversation_record(tenant, conversation_id, payload, fingerprints[index])
        for index, conversation_id, payload in rows
    ]
    messages = [_message_record(tenant, *row) for row in message_rows]
    with server_bound_cursor(prepare=len(rows) == 1) as cursor:
        cursor.execute(_INSERT_CONVERSATIONS_WITH_MESSAGES, [_records(conversations), _records(messages)])
        stored = cursor.fetchall()
    return {id_ for id_, is_conversation in stored if is_conversation}, {
        id_ for id_, is_conversation in stored if not is_conversation
    }


def _records(records: list[dict[str, Any]]) -> str:
    """One JSON document for a whole batch of rows: orjson writes it in C, where psycopg would
    adapt each value of each column in Python (five times the client time for a batch of 100
    conversations, and a slower statement)."""
    return orjson.dumps(records).decode()


def _utc(at: datetime | None) -> datetime | None:
    """``at`` in UTC: orjson writes an offset in hours and minutes only, so a zone whose offset has
    seconds (Monrovia until 1972: -0:44:30) would be stored up to a minute off."""
    return None if at is None else at.astimezone(UTC)


def _conversation_record(
    tenant: Tenant, conversation_id: UUID, payload: ConversationIn, fingerprint: str
) -> dict[str, Any]:
    sent = [message.sent_at for message in payload.messages]
    return {
        "id": conversation_id,
        "tenant_id": tenant.pk,
        "external_id": payload.external_id,
        "external_user_id": payload.user_id,
        "channel": payload.channel.value,
        "session_id": payload.session_id,
        "status": payload.status.value,
        "summary": payload.summary,
        "transcript": payload.transcript,
        "metadata": payload.metadata,
        "embedding_state": _PENDING,
        "ingest_fingerprint": fingerprint,
        "newest_sent_at": _utc(max((at for at in sent if at is not None), default=None)),
        "unsent": None in sent,
    }


def _message_record(
    tenant: Tenant, message_id: UUID, payload: MessageIn, conversation_id: UUID | None
) -> dict[str, Any]:
    """A message's fields (``_MESSAGE_FIELDS``); a conversation not known yet is null, for the
    statement to fill in."""
    return {
        "id": message_id,
        "tenant_id": tenant.pk,
        "conversation_id": conversation_id,
        "role": payload.role.value,
        "text": payload.text,
        "sender_name": payload.sender_name,
        "sender_avatar_url": payload.sender_avatar_url,
        "external_id": payload.external_id,
        "raw_payload": payload.raw_payload,
        "sent_at": _utc(payload.sent_at),
        "embedding_state": _PENDING,
    }


def _live_conversation_ids(tenant: Tenant, ids: set[UUID]) -> set[UUID]:
    if not ids:
        return set()
    # Locked in id order, so concurrent batches touching the same conversations queue up instead
    # of deadlocking when the last_message_at trigger updates them.
    return set(
        Conversation.objects.filter(tenant=tenant, id__in=ids, deleted_at__isnull=True)
        .order_by("id")
        .select_for_update(no_key=True)
        .values_list("id", flat=True)
    )


def _ingest_messages(
    tenant: Tenant, rows: Sequence[tuple[UUID, InboundMessageIn, UUID | None]]
) -> tuple[dict[tuple[str, str], UUID], set[UUID]]:
    """Run ``_INGEST_MESSAGES``; returns each (user, session)'s conversation and the ids of the
    messages stored (the others are replays)."""
    if not rows:
        return {}, set()
    channels: dict[tuple[str, str], str] = {}
    for _, payload, conversation_id in rows:
        if conversation_id is None:
            channels.setdefault((payload.user_id or "", payload.session_id or ""), payload.channel.value)
    # A fixed order, so concurrent upserts lock rows in the same order.
    sessions = [
        {"id": uuid7(), "user_id": user, "session_id": session, "channel": channels[(user, session)]}
        for user, session in sorted(channels)
    ]
    messages = [
        {**_message_record(tenant, *row), "user_id": row[1].user_id, "session_id": row[1].session_id} for row in rows
    ]
    with server_bound_cursor(prepare=len(rows) == 1) as cursor:
        cursor.execute(_INGEST_MESSAGES, [tenant.pk, _records(sessions), _records(messages)])
        returned = cursor.fetchall()
    conversations = {(user, session): row_id for row_id, user, session in returned if user is not None}
    return conversations, {row_id for row_id, user, _ in returned if user is None}


def _stored_external_ids(tenant: Tenant, payloads: Sequence[ConversationIn]) -> tuple[set[str], set[str]]:
    """Which of the payloads' conversation and message external ids are stored: both in one
    round trip (as two ORM queries they were a fifth of an acknowledgement: docs/benchmarks.md)."""
    conversations = [payload.external_id for payload in payloads if payload.external_id]
    messages = [message.external_id for payload in payloads for message in payload.messages if message.external_id]
    if not conversations and not messages:
        return set(), set()
    with server_bound_cursor() as cursor:
        cursor.execute(_STORED_EXTERNAL_IDS, [tenant.pk, conversations, tenant.pk, messages])
        stored = cursor.fetchall()
    return {external_id for external_id, is_conversation in stored if is_conversation}, {
        external_id for external_id, is_conversation in stored if not is_conversation
    }


def _message_external_id_clash(messages: Sequence[MessageIn], taken: set[str]) -> Rejected | None:
    """Reject a payload one of whose message external_ids is stored or used earlier in the batch.
    Its ids join ``taken`` only when the whole payload passes, so a rejected payload does not
    block later ones."""
    own: set[str] = set()
    for position, message in enumerate(messages):
        if message.external_id and (message.external_id in taken or message.external_id in own):
            return Rejected(
                "conflict",
                "A message with this external_id is already stored.",
                {f"messages.{position}.external_id": ["Already stored."]},
            )
        if message.external_id:
            own.add(message.external_id)
    taken.update(own)
    return None


def _withdraw(
    conversation_id: UUID, payload: ConversationIn, stored: set[UUID], message_ids: tuple[UUID, ...]
) -> Rejected:
    Message.objects.filter(id__in=[m for m in message_ids if m in stored]).delete()
    Conversation.objects.filter(id=conversation_id).delete()
    position = next(i for i, message_id in enumerate(message_ids) if message_id not in stored)
    return Rejected(
        "conflict",
        "A message with this external_id is already stored.",
        {f"messages.{position}.external_id": ["Already stored."]},
    )


def _explain_conversation_conflicts(
    tenant: Tenant, missing: Sequence[tuple[int, ConversationIn]], fingerprints: Sequence[str]
) -> dict[int, ItemResult]:
    external_ids = [payload.external_id for _, payload in missing if payload.external_id]
    stored = {
        external_id: (conversation_id, fingerprint)
        for conversation_id, external_id, fingerprint in Conversation.objects.filter(
            tenant=tenant, external_id__in=external_ids
        ).values_list("id", "external_id", "ingest_fingerprint")
    }
    explained: dict[int, ItemResult] = {}
    for index, payload in missing:
        if payload.external_id and payload.external_id in stored:
            conversation_id, fingerprint = stored[payload.external_id]
            if fingerprint == fingerprints[index]:
                explained[index] = Accepted(
                    id=conversation_id, replayed=True, message_ids=_message_ids_of(conversation_id)
                )
            else:
                explained[index] = Rejected(
                    "conflict",
                    "A conversation with this external_id was stored with a different body.",
                    {"external_id": ["Already used with a different body."]},
                )
        else:
            explained[index] = Rejected(
                "conflict",
                "This user already has an active conversation with this session_id.",
                {"session_id": ["An active conversation with this user_id and session_id exists."]},
            )
    return explained


def _message_ids_of(conversation_id: UUID) -> tuple[UUID, ...]:
    return tuple(
        Message.objects.filter(conversation_id=conversation_id)
        .order_by("created_at", "id")
        .values_list("id", flat=True)
    )


def _explain_message_replays(tenant: Tenant, replays: Sequence[tuple[int, MessageIn]]) -> dict[int, ItemResult]:
    external_ids = [payload.external_id for _, payload in replays if payload.external_id]
    stored = {
        external_id: (message_id, conversation_id, text)
        for message_id, external_id, conversation_id, text in Message.objects.filter(
            tenant=tenant, external_id__in=external_ids
        ).values_list("id", "external_id", "conversation_id", "text")
    }
    explained: dict[int, ItemResult] = {}
    for index, payload in replays:
        message_id, conversation_id, text = stored[payload.external_id or ""]
        if text == payload.text:
            explained[index] = Accepted(id=message_id, conversation_id=conversation_id, replayed=True)
        else:
            explained[index] = Rejected(
                "conflict",
                "A message with this external_id was stored with a different text.",
                {"external_id": ["Already used with a different text."]},
            )
    return explained
