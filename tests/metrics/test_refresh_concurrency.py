"""A refresh never blocks readers of a metric view.

The property is about locks, so the tests check locks, with real connections and real
transactions (no timing): ``REFRESH MATERIALIZED VIEW CONCURRENTLY`` holds an EXCLUSIVE lock on the
view, which lets SELECT's ACCESS SHARE through; a plain REFRESH holds ACCESS EXCLUSIVE, which does
not. A reader with ``lock_timeout`` either reads at once or fails with ``lock_not_available``; the
plain refresh failing the same check shows the check can fail.

To catch a refresh mid-way, another connection locks one of the view's source tables first: the
refresh takes its lock on the view, then waits for the source table, and stays there (holding the
view's lock) until the test lets it go.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from django.db import connection, connections
from psycopg import errors

from metrics.matviews import CONVERSATION_METRICS, PERFORMANCE_STATS
from metrics.services import metric_view_refresh
from tests.metrics.data import refresh_all

pytestmark = pytest.mark.django_db(transaction=True)

# Each view with one table it reads.
VIEWS_AND_SOURCES = [(CONVERSATION_METRICS, "feedback_feedback"), (PERFORMANCE_STATS, "conversations_conversation")]
# A bound on waiting for the refresh to reach its lock wait (a safety net for a broken test, never
# the thing asserted).
WAIT_LIMIT_SECONDS = 30


@contextmanager
def raw_connection(*, autocommit: bool = False) -> Iterator[psycopg.Connection[Any]]:
    """A connection of its own to the test database, outside Django's."""
    db = connection.settings_dict
    conn = psycopg.connect(
        host=db["HOST"],
        port=db["PORT"],
        user=db["USER"],
        password=db["PASSWORD"] or None,
        dbname=db["NAME"],
        autocommit=autocommit,
    )
    try:
        yield conn
    finally:
        conn.close()


def refresh_waiting_pid(monitor: psycopg.Connection[Any]) -> int:
    """The backend of the refresh once it waits for a lock (on the source table)."""
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS
    while time.monotonic() < deadline:
        row = monitor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND query LIKE 'REFRESH MATERIALIZED VIEW%%' AND wait_event_type = 'Lock'"
        ).fetchone()
        if row:
            return int(row[0])
        time.sleep(0.02)
    pytest.fail("the refresh never reached its lock wait")


def lock_modes_on(monitor: psycopg.Connection[Any], *, pid: int, relation: str) -> set[str]:
    rows = monitor.execute(
        "SELECT mode FROM pg_locks WHERE pid = %s AND relation = %s::regclass AND granted", [pid, relation]
    ).fetchall()
    return {row[0] for row in rows}


def read_view(reader: psycopg.Connection[Any], view: str) -> int:
    reader.execute("SET lock_timeout = '1s'")
    (count,) = reader.execute(f"SELECT count(*) FROM {view}").fetchone() or (None,)
    reader.rollback()
    return int(count)


@pytest.mark.parametrize(("view", "source"), VIEWS_AND_SOURCES)
def test_readers_read_while_the_concurrent_refresh_is_mid_way(view, source):
    refresh_all()  # a concurrent refresh needs a populated view
    outcome: dict[str, Any] = {}

    def refresh() -> None:
        try:
            outcome["mode"] = metric_view_refresh(view=view).mode
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc
        finally:
            connections.close_all()

    with raw_connection() as blocker, raw_connection() as reader, raw_connection(autocommit=True) as monitor:
        blocker.execute(f"LOCK TABLE {source} IN ACCESS EXCLUSIVE MODE")
        thread = threading.Thread(target=refresh)
        thread.start()
        try:
            pid = refresh_waiting_pid(monitor)
            modes = lock_modes_on(monitor, pid=pid, relation=view)
            assert "ExclusiveLock" in modes
            assert "AccessExclusiveLock" not in modes
            assert read_view(reader, view) >= 0  # not blocked: no lock_not_available
            # A second refresh of the same view does not queue behind the first.
            assert metric_view_refresh(view=view).mode == "skipped"
        finally:
            blocker.rollback()
            thread.join()
    assert outcome == {"mode": "concurrent"}


@pytest.mark.parametrize(("view", "source"), VIEWS_AND_SOURCES)
def test_a_plain_refresh_mid_way_would_block_readers(view, source):
    refresh_all()

    def refresh() -> None:
        with raw_connection() as refresher:
            refresher.execute(f"REFRESH MATERIALIZED VIEW {view}")
            refresher.commit()

    with raw_connection() as blocker, raw_connection() as reader, raw_connection(autocommit=True) as monitor:
        blocker.execute(f"LOCK TABLE {source} IN ACCESS EXCLUSIVE MODE")
        thread = threading.Thread(target=refresh)
        thread.start()
        try:
            pid = refresh_waiting_pid(monitor)
            assert "AccessExclusiveLock" in lock_modes_on(monitor, pid=pid, relation=view)
            with pytest.raises(errors.LockNotAvailable):
                read_view(reader, view)
        finally:
            blocker.rollback()
            thread.join()


@pytest.mark.parametrize("concurrently", [True, False])
def test_an_open_reader_transaction_blocks_only_the_plain_refresh(concurrently):
    refresh_all()
    with raw_connection() as reader, raw_connection() as refresher:
        reader.execute(f"SELECT count(*) FROM {CONVERSATION_METRICS}").fetchone()  # holds ACCESS SHARE until rollback
        refresher.execute("SET lock_timeout = '1s'")
        statement = f"REFRESH MATERIALIZED VIEW {'CONCURRENTLY ' if concurrently else ''}{CONVERSATION_METRICS}"
        if concurrently:
            refresher.execute(statement)
            refresher.commit()
        else:
            with pytest.raises(errors.LockNotAvailable):
                refresher.execute(statement)
        reader.rollback()
