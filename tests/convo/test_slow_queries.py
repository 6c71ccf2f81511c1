"""The slow-query log: normalised fingerprints (pure functions), and the wrapper on real connections
of the embedded PostgreSQL, in the test's thread and in a thread of its own."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import pytest
from django.db import OperationalError, connection, connections, transaction

from convo.slow_queries import (
    FINGERPRINT_TEXT_CHARS,
    frame_is_library,
    pg_stat_statements_top,
    query_caller,
    slow_query_wrapper,
    sql_fingerprint,
    sql_normalise,
)

# --- normalisation --------------------------------------------------------------------------------


def test_literals_and_placeholders_become_question_marks():
    sql = "SELECT * FROM t WHERE a = 'x' AND b = 42 AND c = 3.5e2 AND d = %s AND e = %(name)s AND f = $1"
    assert sql_normalise(sql) == "SELECT * FROM t WHERE a = ? AND b = ? AND c = ? AND d = ? AND e = ? AND f = ?"


def test_whitespace_collapses_and_comments_go():
    sql = "SELECT  a,\n\t b -- the b\nFROM t /* hint */ WHERE a = 1\n"
    assert sql_normalise(sql) == "SELECT a, b FROM t WHERE a = ?"


def test_in_lists_of_any_length_share_one_fingerprint():
    short = "SELECT id FROM t WHERE id IN (%s)"
    long = "SELECT id FROM t WHERE id IN (%s, %s, %s, %s)"
    inline = "SELECT id FROM t WHERE id IN ( 1,2 ,3 )"
    assert sql_normalise(long) == "SELECT id FROM t WHERE id IN (...)"
    assert sql_fingerprint(short) == sql_fingerprint(long) == sql_fingerprint(inline)
    assert sql_normalise("SELECT 1 FROM t WHERE s NOT IN ('a', 'b')") == "SELECT ? FROM t WHERE s NOT IN (...)"


def test_multi_row_values_collapse():
    one = 'INSERT INTO "t" ("a", "b") VALUES (%s, %s)'
    three = 'INSERT INTO "t" ("a", "b") VALUES (%s, %s), (%s, DEFAULT), (%s, NULL) RETURNING "t"."id"'
    assert sql_normalise(one) == 'INSERT INTO "t" ("a", "b") VALUES (...)'
    assert sql_normalise(three) == 'INSERT INTO "t" ("a", "b") VALUES (...) RETURNING "t"."id"'


def test_pgvector_literals_collapse_whatever_the_vector():
    a = "SELECT id FROM m ORDER BY embedding <=> '[0.1,0.2,0.3]'::vector LIMIT 10"
    b = "SELECT id FROM m ORDER BY embedding <=> '[-0.5,1e-3,0.25,0.125]'::vector LIMIT 20"
    assert sql_normalise(a) == "SELECT id FROM m ORDER BY embedding <=> ?::vector LIMIT ?"
    assert sql_fingerprint(a) == sql_fingerprint(b)
    assert sql_normalise("SELECT ARRAY[0.1, 0.2, 0.3]::vector") == "SELECT ARRAY[...]::vector"


def test_identifiers_keep_their_digits_and_quotes():
    sql = 'SELECT U0."col2", "t1"."2fa" FROM "conversations_message" U0 INNER JOIN "t1" ON (U0."x" = 7)'
    assert (
        sql_normalise(sql)
        == 'SELECT U0."col2", "t1"."2fa" FROM "conversations_message" U0 INNER JOIN "t1" ON (U0."x" = ?)'
    )


def test_quoted_quotes_and_escape_strings_are_one_literal():
    assert sql_normalise("SELECT 'it''s', E'a\\'b', $$x$$, $tag$y$tag$") == "SELECT ?, ?, ?, ?"
    assert sql_normalise("SELECT x FROM t WHERE name='e'") == "SELECT x FROM t WHERE name=?"


def test_pg_stat_statements_text_has_the_fingerprint_of_the_django_sql():
    django_sql = 'SELECT "t"."id" FROM "t" WHERE ("t"."a" = %s AND "t"."b" IN (%s, %s))'
    pg_text = 'SELECT "t"."id" FROM "t" WHERE ("t"."a" = $1 AND "t"."b" IN ($2, $3, $4))'
    assert sql_fingerprint(django_sql) == sql_fingerprint(pg_text)


def test_the_fingerprint_is_a_stable_sha1_prefix_and_the_text_is_truncated():
    fp = sql_fingerprint("SELECT 1")
    assert fp.digest == "d41673f80456"  # sha1("SELECT ?")[:12]: the same in every process and release
    assert fp.text == "SELECT ?"
    columns = ", ".join(f"c{i}" for i in range(400))
    long = sql_fingerprint(f"SELECT {columns} FROM t")
    assert len(long.text) == FINGERPRINT_TEXT_CHARS and long.text.endswith("…")
    assert long.digest != sql_fingerprint(f"SELECT {columns}, extra FROM t").digest  # over the whole text


def test_library_frames_are_not_callers():
    assert frame_is_library(module="django.db.backends.utils", filename="/x/django/db/backends/utils.py")
    assert frame_is_library(module="psycopg.cursor", filename="/x/psycopg/cursor.py")
    assert frame_is_library(module="somepkg.mod", filename="/venv/lib/python3.11/site-packages/somepkg/mod.py")
    assert frame_is_library(module="threading", filename=threading.__file__)
    assert frame_is_library(module="convo.slow_queries", filename="/work/convo/slow_queries.py")
    assert not frame_is_library(module="conversations.selectors", filename="/work/main/conversations/selectors.py")


def test_the_caller_is_path_line_function_relative_to_the_project():
    line = sys._getframe().f_lineno + 1
    caller = query_caller(sys._getframe())
    assert (
        caller
        == f"tests/convo/test_slow_queries.py:{line} test_the_caller_is_path_line_function_relative_to_the_project"
    )


# --- the wrapper on real connections --------------------------------------------------------------


def _slow_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "convo.slow_queries"]


@pytest.mark.django_db
def test_a_query_over_the_threshold_is_logged_with_fingerprint_and_caller(settings, caplog):
    settings.SLOW_QUERY_MS = 20
    caplog.set_level(logging.WARNING, logger="convo.slow_queries")
    with connection.cursor() as cursor:
        line = sys._getframe().f_lineno + 1
        cursor.execute("SELECT pg_sleep(%s)", [0.1])
    [record] = _slow_records(caplog)
    assert record.levelno == logging.WARNING
    assert record.fingerprint == sql_fingerprint("SELECT pg_sleep(%s)").digest
    assert record.sql_normalised == "SELECT pg_sleep(?)"
    assert record.caller == (
        f"tests/convo/test_slow_queries.py:{line} test_a_query_over_the_threshold_is_logged_with_fingerprint_and_caller"
    )
    assert record.db_alias == "default" and record.failed is False and record.many is False
    assert isinstance(record.duration_ms, float)
    assert record.fingerprint in record.getMessage() and record.caller in record.getMessage()


@pytest.mark.django_db
def test_queries_under_the_threshold_and_a_zero_threshold_log_nothing(settings, caplog):
    caplog.set_level(logging.WARNING, logger="convo.slow_queries")
    settings.SLOW_QUERY_MS = 60_000
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [0.05])
    settings.SLOW_QUERY_MS = 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [0.05])
    assert _slow_records(caplog) == []


@pytest.mark.django_db
def test_a_query_cancelled_by_statement_timeout_is_logged_as_failed(settings, caplog):
    settings.SLOW_QUERY_MS = 10
    caplog.set_level(logging.WARNING, logger="convo.slow_queries")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL statement_timeout = 50")
        with pytest.raises(OperationalError), transaction.atomic():  # a savepoint, rolled back
            cursor.execute("SELECT pg_sleep(5)")
    [record] = _slow_records(caplog)
    assert record.failed is True
    assert record.sql_normalised == "SELECT pg_sleep(?)"


@pytest.mark.django_db
def test_connections_of_other_threads_are_covered_and_nested_wrappers_stay_balanced(settings, caplog):
    """A thread's first query opens its own connection inside someone's ``execute_wrapper()``:
    ours goes in first, so leaving that context removes theirs, not ours."""
    settings.SLOW_QUERY_MS = 20
    caplog.set_level(logging.WARNING, logger="convo.slow_queries")
    seen: dict[str, Any] = {}

    def marker(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        return execute(sql, params, many, context)

    def in_thread() -> None:
        try:
            own = connections["default"]
            with own.execute_wrapper(marker), own.cursor() as cursor:
                seen["inside"] = list(own.execute_wrappers)
                cursor.execute("SELECT pg_sleep(%s)", [0.05])
            seen["after"] = list(own.execute_wrappers)
        finally:
            connections.close_all()

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join()
    assert seen["inside"] == [slow_query_wrapper, marker]
    assert seen["after"] == [slow_query_wrapper]
    [record] = _slow_records(caplog)
    assert record.caller.startswith("tests/convo/test_slow_queries.py:") and record.caller.endswith(" in_thread")
    assert connection.execute_wrappers.count(slow_query_wrapper) == 1  # the test's own connection, once


# --- pg_stat_statements ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_pg_stat_statements_top_is_empty_without_the_extension_and_leaves_the_transaction_usable():
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'")
        if cursor.fetchone()[0]:
            pytest.skip("this server has pg_stat_statements")
    with transaction.atomic():
        assert pg_stat_statements_top(limit=5) == []
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
