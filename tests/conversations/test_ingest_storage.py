"""The storage layer of ingest: conversations and their messages written in one statement."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from django.db import connection
from django.db.models import F
from django.db.models.functions import Coalesce

from conversations.models import Conversation, Message, Tenant
from conversations.payloads import ConversationIn
from conversations.services.ingest import conversation_create_batch

pytestmark = pytest.mark.django_db

EARLY = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LATE = datetime(2026, 1, 2, 9, 0, 0, tzinfo=UTC)
# Ahead of the database clock, within what ingest accepts (up to a day ahead).
AHEAD = datetime.now(tz=UTC).replace(microsecond=0) + timedelta(hours=12)


def _conversation_updates() -> int:
    """Conversation rows updated so far in this transaction (the test's own)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT n_tup_upd FROM pg_stat_xact_user_tables WHERE relname = %s", [Conversation._meta.db_table]
        )
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def _newest_message_time(conversation_id: object) -> datetime | None:
    """What the messages trigger computes: the newest of sent_at, or created_at where it is unset."""
    return max(
        Message.objects.filter(conversation_id=conversation_id)
        .annotate(at=Coalesce(F("sent_at"), F("created_at")))
        .values_list("at", flat=True),
        default=None,
    )


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param([LATE, EARLY], id="every message has sent_at"),
        pytest.param([EARLY, None], id="one message has none"),
        pytest.param([AHEAD, None], id="a sent_at ahead of the clock"),
        pytest.param([], id="no messages"),
    ],
)
def test_last_message_at_is_written_with_the_row_as_the_trigger_would(tenant: Tenant, sent: list[datetime | None]):
    payload = ConversationIn.model_validate(
        {"user_id": "u", "messages": [{"text": f"m{i}", "sent_at": at} for i, at in enumerate(sent)]}
    )
    before = _conversation_updates()

    (result,) = conversation_create_batch(tenant=tenant, payloads=[payload])

    stored = Conversation.objects.get(pk=result.id)
    assert stored.last_message_at == _newest_message_time(stored.pk)
    assert (stored.last_message_at is None) == (not sent)
    # Written once: the trigger found nothing left to move.
    assert _conversation_updates() == before


def test_a_batch_writes_each_conversation_once_and_later_messages_still_move_it(tenant: Tenant):
    payloads = [
        ConversationIn.model_validate(
            {"user_id": f"u{n}", "messages": [{"text": "a", "sent_at": EARLY}, {"text": "b"}]}
        )
        for n in range(5)
    ]
    before = _conversation_updates()

    results = conversation_create_batch(tenant=tenant, payloads=payloads)

    assert _conversation_updates() == before
    stored = {c.pk: c.last_message_at for c in Conversation.objects.filter(pk__in=[r.id for r in results])}
    assert all(stored[pk] == _newest_message_time(pk) for pk in stored)
    # The trigger still follows messages added afterwards.
    Message.objects.create(tenant=tenant, conversation_id=results[0].id, text="c", sent_at=AHEAD)
    assert Conversation.objects.get(pk=results[0].id).last_message_at == AHEAD


def test_a_replayed_conversation_takes_its_messages_out_of_the_statement(tenant: Tenant):
    body = {"external_id": "c-1", "user_id": "u", "messages": [{"text": "a"}, {"text": "b"}]}
    (first,) = conversation_create_batch(tenant=tenant, payloads=[ConversationIn.model_validate(body)])
    fresh = ConversationIn.model_validate({"user_id": "v", "messages": [{"text": "c"}]})

    replay, other = conversation_create_batch(tenant=tenant, payloads=[ConversationIn.model_validate(body), fresh])

    assert replay.id == first.id and replay.replayed
    assert Message.objects.filter(conversation_id=first.id).count() == 2
    assert Message.objects.filter(conversation_id=other.id).count() == 1


def test_inbound_messages_start_or_continue_their_session_in_one_statement(tenant: Tenant):
    from conversations.payloads import InboundMessageIn
    from conversations.services.ingest import message_ingest_batch

    def inbound(**fields: object) -> InboundMessageIn:
        return InboundMessageIn.model_validate({"text": "hello", **fields})

    (first,) = message_ingest_batch(tenant=tenant, payloads=[inbound(user_id="u", session_id="s", sent_at=EARLY)])
    other = Conversation.objects.create(tenant=tenant, external_user_id="v")
    later, elsewhere, fresh = message_ingest_batch(
        tenant=tenant,
        payloads=[
            inbound(user_id="u", session_id="s", sent_at=LATE),
            inbound(conversation_id=str(other.pk), sent_at=LATE),
            inbound(user_id="u", session_id="t"),
        ],
    )

    assert later.conversation_id == first.conversation_id  # continued
    assert elsewhere.conversation_id == other.pk
    assert fresh.conversation_id not in {first.conversation_id, other.pk}  # a new session
    # The trigger moved each conversation to its newest message, in the same statement's wake.
    for conversation_id in (first.conversation_id, other.pk, fresh.conversation_id):
        assert Conversation.objects.get(pk=conversation_id).last_message_at == _newest_message_time(conversation_id)
    assert Conversation.objects.get(pk=first.conversation_id).last_message_at == LATE
    assert Message.objects.filter(conversation_id=first.conversation_id).count() == 2


# Values that JSON and SQL literals must quote or escape: the ingest statements send their rows as
# one JSON document per table, and every value must arrive as it was sent.
AWKWARD_TEXTS = [
    "NULL",
    '{"a", "b"}',
    "back\\slash \\N",
    "comma, quote \" and 'apostrophe'",
    " leading and trailing spaces ",
    "ünïcödé 🙂\n\ttabs",
]


def test_awkward_values_are_stored_as_sent(tenant: Tenant):
    from conversations.payloads import InboundMessageIn
    from conversations.services.ingest import message_ingest_batch

    conversations = conversation_create_batch(
        tenant=tenant,
        payloads=[
            ConversationIn.model_validate(
                {
                    "user_id": text,
                    "session_id": f"s{n}",
                    "summary": text,
                    "metadata": {"text": text, "null": None, "list": [text]},
                    "messages": [{"text": text, "sender_name": text, "raw_payload": {"text": text}}],
                }
            )
            for n, text in enumerate(AWKWARD_TEXTS)
        ],
    )
    inbound = message_ingest_batch(
        tenant=tenant,
        payloads=[
            InboundMessageIn.model_validate({"user_id": text, "session_id": text, "text": text})
            for text in AWKWARD_TEXTS
        ],
    )

    for text, result in zip(AWKWARD_TEXTS, conversations, strict=True):
        stored = Conversation.objects.get(pk=result.id)
        assert (stored.external_user_id, stored.summary) == (text, text)
        assert stored.metadata == {"text": text, "null": None, "list": [text]}
        message = Message.objects.get(conversation_id=result.id)
        assert (message.text, message.sender_name, message.raw_payload) == (text, text, {"text": text})
    for text, result in zip(AWKWARD_TEXTS, inbound, strict=True):
        message = Message.objects.get(pk=result.id)
        assert message.text == text
        assert Conversation.objects.filter(pk=result.conversation_id, external_user_id=text, session_id=text).exists()


def test_a_sent_at_whose_offset_has_seconds_is_stored_to_the_microsecond(tenant: Tenant):
    from conversations.payloads import InboundMessageIn
    from conversations.services.ingest import message_ingest_batch

    # Liberia kept -0:44:30 until 1972; JSON offsets carry hours and minutes only.
    monrovia = timezone(-timedelta(minutes=44, seconds=30))
    sent = datetime(1971, 6, 1, 12, 0, 0, 123456, tzinfo=monrovia)

    (conversation,) = conversation_create_batch(
        tenant=tenant,
        payloads=[ConversationIn.model_validate({"user_id": "u", "messages": [{"text": "a", "sent_at": sent}]})],
    )
    (inbound,) = message_ingest_batch(
        tenant=tenant,
        payloads=[InboundMessageIn.model_validate({"user_id": "v", "session_id": "s", "text": "b", "sent_at": sent})],
    )

    assert Message.objects.get(conversation_id=conversation.id).sent_at == sent
    assert Conversation.objects.get(pk=conversation.id).last_message_at == sent
    assert Message.objects.get(pk=inbound.id).sent_at == sent


def test_each_record_carries_exactly_the_fields_its_statement_reads(tenant: Tenant):
    # json_to_recordset reads a missing or misspelt key as NULL, silently: the keys must match.
    from conversations.services import ingest
    from convo.ids import uuid7

    payload = ConversationIn.model_validate({"user_id": "u", "messages": [{"text": "a"}]})

    conversation = ingest._conversation_record(tenant, uuid7(), payload, "fingerprint")
    message = ingest._message_record(tenant, uuid7(), payload.messages[0], None)

    assert list(conversation) == [name for name, _ in ingest._CONVERSATION_FIELDS]
    assert list(message) == [name for name, _ in ingest._MESSAGE_FIELDS]
