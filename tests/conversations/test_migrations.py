"""Migrations are reversible and produce the indexes the query patterns need."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.db import connection


def index_names() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename LIKE 'conversations_%'")
        return {row[0] for row in cursor.fetchall()}


@pytest.mark.django_db(transaction=True)
def test_conversations_migrations_reverse_and_reapply():
    expected = {
        "conv_tenant_user_created",
        "conv_tenant_channel_created",
        "conv_tenant_created_live",
        "conv_active_user",
        "conv_metadata_gin",
        "conv_embedding_pending",
        "conv_unique_active_session",
        "msg_embedding_pending",
    }
    assert expected <= index_names()
    call_command("migrate", "conversations", "zero", verbosity=0)
    assert not index_names()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_proc WHERE proname LIKE 'convo_%'")
        assert cursor.fetchone()[0] == 0
    # Everything: unapplying conversations unapplied the apps that depend on it (clustering) too.
    call_command("migrate", verbosity=0)
    assert expected <= index_names()


@pytest.mark.django_db
def test_sqlmigrate_shows_partial_and_gin_indexes():
    from io import StringIO

    out = StringIO()
    call_command("sqlmigrate", "conversations", "0001", stdout=out)
    sql = out.getvalue()
    assert 'CREATE UNIQUE INDEX "conv_unique_active_session"' in sql
    assert 'WHERE ("deleted_at" IS NULL AND "status" = \'active\')' in sql
    assert 'USING gin ("metadata" jsonb_path_ops)' in sql
    assert "WHERE \"embedding_state\" = 'pending'" in sql


@pytest.mark.django_db(transaction=True)
def test_vectors_stored_before_0007_get_their_message_conversation():
    from conversations.models import EmbeddingSpace, MessageEmbedding
    from conversations.services.embedding_spaces import embedding_space_index
    from tests.factories import MessageFactory, TenantFactory

    def hnsw_definitions() -> set[str]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexdef LIKE '% USING hnsw %'")
            return {row[0] for row in cursor.fetchall()}

    call_command("migrate", "conversations", "0006", verbosity=0)
    message = MessageFactory(conversation__tenant=TenantFactory())
    space = EmbeddingSpace.objects.create(model_id="test:before-0007", dimensions=3)
    embedding_space_index(space=space)
    with connection.cursor() as cursor:  # the table as 0006 left it: no conversation column
        cursor.execute(
            "INSERT INTO conversations_messageembedding (item_id, tenant_id, space_id, embedding, created_at) "
            "VALUES (%s, %s, %s, '[1,0,0]', now())",
            [message.pk, message.tenant_id, space.pk],
        )
    indexes_before = hnsw_definitions()
    assert f"msg_hnsw_space_{space.pk}" in " ".join(indexes_before)

    call_command("migrate", verbosity=0)

    assert MessageEmbedding.objects.get(item=message).conversation_id == message.conversation_id
    assert "msg_embedding_space_conv" in index_names()
    # The fill dropped the HNSW indexes and built them again, exactly as they were.
    assert hnsw_definitions() == indexes_before


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("table", "columns"),
    [
        # conversation_id leads none: those rows are deleted through their messages (item_id).
        ("conversations_messageembedding", ["item_id", "space_id", "tenant_id"]),
        ("conversations_conversationembedding", ["item_id", "tenant_id"]),
        ("feedback_knowledgeembedding", ["item_id", "tenant_id"]),
    ],
)
def test_each_vector_table_foreign_key_leads_exactly_one_btree_index(table, columns):
    """Deletes cascade and lookups go by these columns, so each must lead an index; and a second
    index it leads is only one more write for every vector stored (migration 0008)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT a.attname FROM pg_index i
              JOIN pg_class ix ON ix.oid = i.indexrelid JOIN pg_am am ON am.oid = ix.relam
              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
             WHERE i.indrelid = %s::regclass AND am.amname = 'btree'
            """,
            [table],
        )
        leading = [row[0] for row in cursor.fetchall()]
    assert {column: leading.count(column) for column in columns} == dict.fromkeys(columns, 1)


@pytest.mark.django_db
def test_deleting_a_conversation_deletes_its_message_vectors_through_the_messages(tenant):
    from django.test.utils import CaptureQueriesContext

    from conversations.models import EmbeddingSpace, MessageEmbedding, SpaceState
    from tests.factories import ConversationFactory, MessageFactory

    space = EmbeddingSpace.objects.create(model_id="test:cascade", dimensions=2, state=SpaceState.ACTIVE)
    doomed, kept = ConversationFactory(tenant=tenant), ConversationFactory(tenant=tenant)
    for conversation in (doomed, kept):
        for message in (MessageFactory(conversation=conversation), MessageFactory(conversation=conversation)):
            MessageEmbedding.objects.create(
                item=message, conversation=conversation, tenant=tenant, space=space, embedding=[1.0, 0.0]
            )

    with CaptureQueriesContext(connection) as queries:
        doomed.delete()

    assert set(MessageEmbedding.objects.values_list("conversation_id", flat=True)) == {kept.pk}
    # Never looked up by conversation alone, which no index of the table leads with.
    assert not [q["sql"] for q in queries if '"conversations_messageembedding"."conversation_id" IN' in q["sql"]]
