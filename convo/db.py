"""Database helpers shared by services."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, Self, TypeVar

import psycopg
from django.conf import settings
from django.db import OperationalError, connection
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper
from psycopg import pq
from psycopg.abc import Params

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# deadlock_detected and serialization_failure: PostgreSQL rolled the transaction back and the
# same work, run again, normally succeeds.
_RETRYABLE_SQLSTATES = {"40P01", "40001"}


def retry_on_deadlock(attempts: int = 3) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run an atomic service again when PostgreSQL aborted it for a deadlock or serialization
    failure. Only the outermost transaction can be retried; inside another one the error passes."""

    def decorator(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            for attempt in range(1, attempts + 1):
                try:
                    return func(*args, **kwargs)
                except OperationalError as exc:
                    sqlstate = getattr(exc.__cause__, "sqlstate", None)
                    if sqlstate not in _RETRYABLE_SQLSTATES or connection.in_atomic_block or attempt == attempts:
                        raise
                    logger.warning("retrying %s after %s (attempt %d)", func.__name__, sqlstate, attempt)
            raise AssertionError("unreachable")

        return wrapper

    return decorator


@contextlib.contextmanager
def no_statement_timeout() -> Iterator[None]:
    """Lift DB_STATEMENT_TIMEOUT_MS on this connection for work that must finish however long it
    takes (HNSW index builds, benchmark mass deletes), then restore the timeout it had, so blocks
    nest. Inside a transaction the change is local to it (safe behind a transaction pooler), and
    when a statement in the block failed, the rollback undoes it: restoring it then would only
    hide the failure behind "current transaction is aborted"."""
    local = connection.in_atomic_block
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('statement_timeout')")
        row = cursor.fetchone()
        previous = row[0] if row else "0"
        cursor.execute("SELECT set_config('statement_timeout', '0', %s)", [local])
    try:
        yield
    finally:
        if not _transaction_failed():
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('statement_timeout', %s, %s)", [previous, local])


def _transaction_failed() -> bool:
    raw = connection.connection
    return raw is not None and raw.info.transaction_status == pq.TransactionStatus.INERROR


def index_ensure(*, name: str, definition: str) -> None:
    """Build the index ``name`` (``CREATE INDEX <name> <definition>``) unless a valid one exists.
    Outside a transaction it is built concurrently, so the table keeps taking writes; one left
    invalid by an interrupted concurrent build is dropped first (``IF NOT EXISTS`` alone would keep
    it, unused, for ever). A build takes as long as the table is big, so it runs without the
    statement timeout; an index already built costs one catalogue read, and neither a lock on the
    table (which ``CREATE INDEX ... IF NOT EXISTS`` still takes) nor a change of settings."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s", [name]
        )
        row = cursor.fetchone()
    if row is not None and row[0]:
        return
    concurrently = "" if connection.in_atomic_block else "CONCURRENTLY"
    with no_statement_timeout(), connection.cursor() as cursor:
        if row is not None:
            cursor.execute(f"DROP INDEX {concurrently} IF EXISTS {name}")
        cursor.execute(f"CREATE INDEX {concurrently} IF NOT EXISTS {name} {definition}")


def hnsw_parameters() -> str:
    """The ``WITH`` clause of every HNSW index convo builds: seed 002's ``m`` and
    ``ef_construction``, from EMBEDDING_HNSW_M and EMBEDDING_HNSW_EF_CONSTRUCTION."""
    return (
        f"WITH (m = {int(settings.EMBEDDING_HNSW_M)}, ef_construction = {int(settings.EMBEDDING_HNSW_EF_CONSTRUCTION)})"
    )


class _BindingCursor(psycopg.Cursor[Any]):
    """A psycopg cursor that binds on the server and prepares, or not, as it was told when opened
    (Django's CursorWrapper calls execute() without psycopg's ``prepare`` argument)."""

    prepare = False

    def execute(
        self, query: Any, params: Params | None = None, *, prepare: bool | None = None, binary: bool | None = None
    ) -> Self:
        return super().execute(query, params, prepare=self.prepare if prepare is None else prepare, binary=binary)


# psycopg only prepares when its threshold is set (Django leaves it None); this one is never
# reached, so only an explicit prepare=True prepares.
_EXPLICIT_ONLY = 2**31


@contextlib.contextmanager
def server_bound_cursor(*, prepare: bool = False) -> Iterator[CursorWrapper]:
    """A cursor on the current connection (and transaction) that sends its parameters apart from
    the statement (server-side binding), for the hot statements that take a batch of values
    (arrays, or a JSON document of rows).

    Django's psycopg cursors bind on the client: each value is quoted into the SQL text in Python
    and the statement is parsed and planned afresh every time. ``prepare`` (for the one-item
    statements of an acknowledgement) makes it a prepared statement on this connection, parsed
    once: ``message_ingest`` took a quarter less time, ``conversation_create`` a tenth. Not for
    batches: a prepared statement soon runs a generic plan, and a batch of 1,000 conversations
    took a quarter longer with one (measured when the rows travelled as arrays, whose lengths
    only a custom plan sees). ``DB_PREPARED_STATEMENTS=false`` turns preparing off (an old
    PgBouncer in transaction pooling: docs/scaling.md). The wrapper is Django's, so the query log
    and the slow-query log see these statements too."""
    connection.ensure_connection()
    raw_connection = connection.connection
    raw = _BindingCursor(raw_connection)
    raw.prepare = prepare and settings.DB_PREPARED_STATEMENTS
    wrapped = (CursorDebugWrapper if connection.queries_logged else CursorWrapper)(raw, connection)
    previous = raw_connection.prepare_threshold
    if raw.prepare:
        raw_connection.prepare_threshold = _EXPLICIT_ONLY
    try:
        yield wrapped
    finally:
        # Django's setting (None) again: its own queries (each a distinct text, with the values in
        # it) must not fill psycopg's cache of statements to prepare.
        raw_connection.prepare_threshold = previous
        raw.close()
