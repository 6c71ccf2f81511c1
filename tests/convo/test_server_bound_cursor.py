"""The ingest statements run on a server-bound cursor: in the caller's transaction, seen by
Django's query log, prepared for one item (an acknowledgement), never for a batch."""

from __future__ import annotations

import psycopg
import pytest
from django.db import connection, transaction

from conversations.models import Message
from conversations.payloads import InboundMessageIn
from conversations.services.ingest import message_ingest, message_ingest_batch
from convo.db import server_bound_cursor

pytestmark = pytest.mark.django_db


def _prepared(fragment: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", [f"%{fragment}%"])
        return int(cursor.fetchone()[0])


def test_parameters_travel_apart_from_the_statement():
    with server_bound_cursor() as cursor:
        assert isinstance(cursor.cursor, psycopg.Cursor)
        assert not isinstance(cursor.cursor, psycopg.ClientCursor)  # not Django's client-binding cursor
        cursor.execute("SELECT %s::text[], %s::uuid[], %s::jsonb[]", [["it's", None], [], [None]])
        assert cursor.fetchone() == (["it's", None], [], [None])


def test_it_runs_in_the_callers_transaction(tenant):
    payload = InboundMessageIn.model_validate({"user_id": "u1", "session_id": "s1", "text": "rolled back"})
    with transaction.atomic():
        accepted = message_ingest(tenant=tenant, payload=payload)
        assert Message.objects.filter(pk=accepted.id).exists()
        transaction.set_rollback(True)
    assert not Message.objects.filter(pk=accepted.id).exists()


def test_djangos_execute_wrappers_see_it(tenant):
    # What the slow-query log (convo.monitoring) hooks into.
    seen: list[str] = []

    def record(execute, sql, params, many, context):
        seen.append(sql)
        return execute(sql, params, many, context)

    payload = InboundMessageIn.model_validate({"user_id": "u1", "session_id": "s1", "text": "logged"})
    with connection.execute_wrapper(record):
        message_ingest(tenant=tenant, payload=payload)
    assert any("WITH sessions AS" in sql for sql in seen)


def _fresh_connection() -> None:
    connection.close()
    connection.close_pool()  # a new physical connection next: nothing is prepared on it


def _ingest(tenant, count: int, text: str) -> None:
    payloads = [
        InboundMessageIn.model_validate({"user_id": "u1", "session_id": "s1", "text": f"{text} {n}"})
        for n in range(count)
    ]
    if count == 1:
        message_ingest(tenant=tenant, payload=payloads[0])
    else:
        message_ingest_batch(tenant=tenant, payloads=payloads)


@pytest.mark.django_db(transaction=True)  # outside a test transaction, to start on a fresh connection
def test_a_one_item_ingest_is_prepared_a_batch_is_not(tenant):
    _fresh_connection()
    for _ in range(3):
        _ingest(tenant, 2, "batch")
    assert _prepared("WITH sessions AS") == 0  # a batch keeps custom plans, fitted to its arrays
    _ingest(tenant, 1, "single")
    assert _prepared("WITH sessions AS") == 1  # at once: the acknowledgement path
    _ingest(tenant, 1, "single again")
    assert _prepared("WITH sessions AS") == 1  # and then reused
    _ingest(tenant, 2, "batch again")  # still fine beside the prepared one
    assert connection.connection.prepare_threshold is None  # as Django leaves it, outside the block
    for _ in range(7):
        Message.objects.filter(tenant=tenant).count()
    assert _prepared("__count") == 0  # Django's own queries are never prepared


@pytest.mark.django_db(transaction=True)
def test_db_prepared_statements_false_prepares_nothing(tenant, settings):
    settings.DB_PREPARED_STATEMENTS = False
    _fresh_connection()
    for _ in range(3):
        _ingest(tenant, 1, "single")
    assert _prepared("WITH sessions AS") == 0
