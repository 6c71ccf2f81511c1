"""The ingest statements run on a server-bound cursor: in the caller's transaction, seen by
Django's query log, and prepared by PostgreSQL once run DB_PREPARE_THRESHOLD times."""

from __future__ import annotations

import psycopg
import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from conversations.models import Message
from conversations.payloads import InboundMessageIn
from conversations.services.ingest import message_ingest
from convo.db import server_bound_cursor

pytestmark = pytest.mark.django_db


def _prepared(fragment: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", [f"%{fragment}%"])
        return int(cursor.fetchone()[0])


def test_parameters_travel_apart_from_the_statement():
    with server_bound_cursor() as cursor:
        assert type(cursor.cursor) is psycopg.Cursor  # not Django's client-binding cursor
        cursor.execute("SELECT %s::text[], %s::uuid[], %s::jsonb[]", [["it's", None], [], [None]])
        assert cursor.fetchone() == (["it's", None], [], [None])


def test_it_runs_in_the_callers_transaction(tenant):
    payload = InboundMessageIn.model_validate({"user_id": "u1", "session_id": "s1", "text": "rolled back"})
    with transaction.atomic():
        accepted = message_ingest(tenant=tenant, payload=payload)
        assert Message.objects.filter(pk=accepted.id).exists()
        transaction.set_rollback(True)
    assert not Message.objects.filter(pk=accepted.id).exists()


def test_the_query_log_sees_it(tenant):
    payload = InboundMessageIn.model_validate({"user_id": "u1", "session_id": "s1", "text": "logged"})
    with CaptureQueriesContext(connection) as captured:
        message_ingest(tenant=tenant, payload=payload)
    assert any("WITH sessions AS" in query["sql"] for query in captured.captured_queries)


@pytest.mark.django_db(transaction=True)  # outside a test transaction, to start on a fresh connection
def test_the_ingest_statement_is_prepared_after_the_threshold(tenant, settings):
    assert settings.DATABASES["default"]["OPTIONS"]["prepare_threshold"] == 5
    connection.close()
    connection.close_pool()  # a new physical connection next: nothing is prepared on it
    for number in range(1, 7):
        payload = InboundMessageIn.model_validate({"user_id": "u1", "session_id": "s1", "text": f"message {number}"})
        message_ingest(tenant=tenant, payload=payload)
        assert _prepared("WITH sessions AS") == (1 if number > 5 else 0), number
