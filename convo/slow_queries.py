"""The slow-query log: every query over ``SLOW_QUERY_MS`` is logged (logger ``convo.slow_queries``,
WARNING) with a normalised fingerprint, its duration and the application code that issued it.

Why it is installed from ``connection_created`` (see ``convo/apps.py``) and not from a middleware:
Django's execute wrappers live on a connection object, and connection objects are per thread. A
middleware's ``with connection.execute_wrapper(...)`` covers web requests only, while the queries
most likely to be slow run in the django-q2 cluster (embedding batches, clustering, deliveries),
in management commands and in schedules; django-q2 offers no hook *around* a task to wrap it. An
install at start-up covers only the main thread of one process. ``connection_created`` is sent
every time any connection, in any thread of any process (gunicorn, qcluster workers after their
fork, commands, the readiness probe's threads), is opened or checked out of the pool, so one
idempotent receiver covers them all. It is infrastructure, like the ``SET`` statements Django's own
docs suggest for that signal, not business logic. A custom database backend would cover as much,
at the price of owning a subclass of Django's PostgreSQL backend.

The wrapper is put first in ``execute_wrappers`` (outermost): ``connection.execute_wrapper()``
context managers pop the *last* wrapper on exit, so appending ours while one of them is active
would unbalance it. When the threshold is not reached the cost is two clock reads and a compare.

Fingerprints are the normalised text's sha1 prefix. ``pg_stat_statements`` text normalises to the
same fingerprint (``$1`` and ``%s`` both become ``?``), so where the extension exists
``pg_stat_statements_top`` joins the database's view with the log.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from convo.env import BASE_DIR

logger = logging.getLogger("convo.slow_queries")

# Characters of normalised SQL kept in a log record (the fingerprint covers the whole text).
FINGERPRINT_TEXT_CHARS = 500

# One pass over the SQL: quoted identifiers are kept; comments dropped; string literals (pgvector's
# '[0.1,0.2,…]' among them), placeholders and numbers become ``?``.
_TOKENS = re.compile(
    r"""
      (?P<ident>"(?:[^"]|"")*")
    | (?P<comment>--[^\n]*|/\*.*?\*/)
    | (?P<string>(?<!\w)[eE]'(?:[^'\\]|''|\\.)*'|'(?:[^']|'')*')
    | (?P<dollar>\$(?P<tag>[A-Za-z_]\w*)?\$.*?\$(?P=tag)?\$)
    | (?P<placeholder>%\(\w+\)s|%s|\$\d+|\?)
    | (?P<number>(?<![\w$.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b)
    """,
    re.VERBOSE | re.DOTALL,
)
_WHITESPACE = re.compile(r"\s+")
_LIST = r"\?(?:\s*,\s*\?)*"
_IN_LIST = re.compile(rf"\bIN\s*\(\s*{_LIST}\s*\)", re.IGNORECASE)
_ROW = r"\(\s*(?:\?|DEFAULT|NULL)(?:\s*,\s*(?:\?|DEFAULT|NULL))*\s*\)"
_VALUES_ROWS = re.compile(rf"\bVALUES\s*{_ROW}(?:\s*,\s*{_ROW})*", re.IGNORECASE)
_BRACKET_LIST = re.compile(rf"\[\s*{_LIST}\s*\]")

# Frames of these are not "the caller": the caller is the application code that ran the query.
_LIBRARY_MODULES = ("django.", "psycopg", "django_q.", __name__)
_LIBRARY_DIRS = tuple(
    {
        variant
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
        for variant in (sysconfig.get_paths()[key], str(Path(sysconfig.get_paths()[key]).resolve()))
    }
)


@dataclass(frozen=True)
class Fingerprint:
    digest: str  # 12 hex characters of sha1(normalised text)
    text: str  # normalised text, truncated to FINGERPRINT_TEXT_CHARS


def sql_normalise(sql: str) -> str:
    """The shape of a statement without its values: literals, numbers and placeholders become
    ``?``, whitespace is collapsed, and lists whose length varies with the data (``IN (?, ?)``,
    multi-row ``VALUES``, ``[?, ?]``) collapse to ``(...)``, so one statement shape has one
    fingerprint whatever the batch size or the vector."""

    def token(match: re.Match[str]) -> str:
        if match.lastgroup == "ident":
            return match.group()
        return " " if match.lastgroup == "comment" else "?"

    text = _TOKENS.sub(token, sql)
    text = _WHITESPACE.sub(" ", text).strip()
    text = _IN_LIST.sub("IN (...)", text)
    text = _VALUES_ROWS.sub("VALUES (...)", text)
    return _BRACKET_LIST.sub("[...]", text)


def sql_fingerprint(sql: str) -> Fingerprint:
    """A stable id for a statement shape (the sha1 prefix of its normalised text) and that text."""
    text = sql_normalise(sql)
    digest = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:12]
    if len(text) > FINGERPRINT_TEXT_CHARS:
        text = text[: FINGERPRINT_TEXT_CHARS - 1] + "…"
    return Fingerprint(digest=digest, text=text)


def frame_is_library(*, module: str, filename: str) -> bool:
    """Django, psycopg, django-q2, installed packages, the standard library, and this module."""
    if module.startswith(_LIBRARY_MODULES) or "site-packages" in filename or "dist-packages" in filename:
        return True
    return filename.startswith(_LIBRARY_DIRS)


def query_caller(frame: FrameType | None) -> str:
    """``path:line function`` of the first frame, walking outwards, in application code."""
    while frame is not None:
        filename = frame.f_code.co_filename
        if not frame_is_library(module=str(frame.f_globals.get("__name__", "")), filename=filename):
            path = Path(filename)
            if path.is_relative_to(BASE_DIR):
                path = path.relative_to(BASE_DIR)
            return f"{path}:{frame.f_lineno} {frame.f_code.co_name}"
        frame = frame.f_back
    return "unknown"


def slow_query_wrapper(execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: dict[str, Any]) -> Any:
    """The execute wrapper: times the query and logs it when it took ``SLOW_QUERY_MS`` or more,
    failed queries included (a statement cancelled by ``statement_timeout`` is the slowest kind)."""
    threshold_ms = settings.SLOW_QUERY_MS
    if threshold_ms <= 0:
        return execute(sql, params, many, context)
    started = time.perf_counter()
    failed = True
    try:
        result = execute(sql, params, many, context)
        failed = False
        return result
    finally:
        elapsed_ms = (time.perf_counter() - started) * 1000
        if elapsed_ms >= threshold_ms:
            _log_slow_query(sql=str(sql), elapsed_ms=elapsed_ms, many=many, context=context, failed=failed)


def _log_slow_query(*, sql: str, elapsed_ms: float, many: bool, context: dict[str, Any], failed: bool) -> None:
    fingerprint = sql_fingerprint(sql)
    caller = query_caller(sys._getframe())
    alias = getattr(context.get("connection"), "alias", "")
    logger.warning(
        "slow query %s %.1f ms%s at %s: %s",
        fingerprint.digest,
        elapsed_ms,
        " (failed)" if failed else "",
        caller,
        fingerprint.text,
        extra={
            "fingerprint": fingerprint.digest,
            "sql_normalised": fingerprint.text,
            "duration_ms": round(elapsed_ms, 1),
            "caller": caller,
            "db_alias": alias,
            "many": many,
            "failed": failed,
        },
    )


def slow_query_log_install(sender: type[BaseDatabaseWrapper], connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """``connection_created`` receiver: put the wrapper on this connection once, outermost."""
    if slow_query_wrapper not in connection.execute_wrappers:
        connection.execute_wrappers.insert(0, slow_query_wrapper)


@dataclass(frozen=True)
class StatementStats:
    fingerprint: str
    query: str
    calls: int
    mean_ms: float
    total_ms: float
    rows: int


def pg_stat_statements_top(*, limit: int = 20, using: str = "default") -> list[StatementStats]:
    """This database's statements with the highest mean time, from ``pg_stat_statements`` where
    the extension is installed (and loaded); an empty list otherwise, never an error: the embedded
    server ships without it, and the application-side log above is then the only source."""
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT extnamespace::regnamespace::text, current_setting('server_version_num')::int "
            "FROM pg_extension WHERE extname = 'pg_stat_statements'"
        )
        row = cursor.fetchone()
    if row is None:
        return []
    schema, server_version = row
    table = f"{connection.ops.quote_name(schema)}.pg_stat_statements"
    # PostgreSQL 13 renamed the timing columns.
    mean, total = ("mean_exec_time", "total_exec_time") if server_version >= 130000 else ("mean_time", "total_time")
    sql = (
        f"SELECT query, calls, {mean}, {total}, rows FROM {table} "
        "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        f"ORDER BY {mean} DESC LIMIT %s"
    )
    try:
        # A savepoint: the extension may exist without being preloaded, and that error must not
        # abort a caller's transaction.
        with transaction.atomic(using=using), connection.cursor() as cursor:
            cursor.execute(sql, [limit])
            rows = cursor.fetchall()
    except DatabaseError as exc:
        logger.warning("pg_stat_statements is installed but cannot be read: %s", exc)
        return []
    return [
        StatementStats(
            fingerprint=sql_fingerprint(query).digest,
            query=query,
            calls=int(calls),
            mean_ms=float(mean_ms),
            total_ms=float(total_ms),
            rows=int(n_rows),
        )
        for query, calls, mean_ms, total_ms, n_rows in rows
    ]
