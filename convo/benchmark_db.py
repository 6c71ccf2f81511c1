"""Database chores shared by the benchmark commands: the URL their helper processes connect with,
deleting a benchmark tenant's rows fast, dropping the embedding kicks a run queued, and the
database's own time for one statement.

Kept out of any one command so the ingest, embeddings, clustering and knowledge benchmarks share
one copy (they used to import these from the ingest command's module).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction


def benchmark_database_url() -> str:
    """The database this process uses, as a URL gunicorn's workers and psycopg understand."""
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    db = connection.settings_dict
    return f"postgresql://{db['USER']}@/{db['NAME']}?host={db['HOST']}&port={db['PORT']}"


def benchmark_tenant_rows_delete(tenant_id: int) -> dict[str, int]:
    """Delete every row of the benchmark tenant, in raw SQL found from the catalog.

    Raw SQL rather than ``Tenant.delete()``: the ORM's cascade would first load 200k+ message ids
    into Python, and it queries every table the models know, including tables of migrations not
    yet applied to this database. The rows go in two rounds: those of tables without a tenant
    column of their own that point at a tenant's row (a message's cluster membership, a knowledge
    entry's versions), found through that row; then every table that points at the tenant. Django's
    foreign keys are DEFERRABLE INITIALLY DEFERRED, so within the transaction the order of the
    tables does not matter.
    """
    counts: dict[str, int] = {}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.conrelid::regclass::text, a.attname, c.confrelid::regclass::text, fa.attname
              FROM pg_constraint c
              JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
              JOIN pg_attribute fa ON fa.attrelid = c.confrelid AND fa.attnum = c.confkey[1]
             WHERE c.contype = 'f' AND array_length(c.conkey, 1) = 1
            """
        )
        references = cursor.fetchall()
        tenant_column = {table: column for table, column, target, _ in references if target == "conversations_tenant"}
        for table, column, target, key in references:
            if table not in tenant_column and target in tenant_column:
                cursor.execute(
                    f'DELETE FROM {table} WHERE "{column}" IN '
                    f'(SELECT "{key}" FROM {target} WHERE "{tenant_column[target]}" = %s)',
                    [tenant_id],
                )
                counts[table] = counts.get(table, 0) + cursor.rowcount
        for table, column in tenant_column.items():
            cursor.execute(f'DELETE FROM {table} WHERE "{column}" = %s', [tenant_id])
            counts[table] = counts.get(table, 0) + cursor.rowcount
        cursor.execute("DELETE FROM conversations_tenant WHERE id = %s", [tenant_id])
        counts["conversations_tenant"] = cursor.rowcount
    return counts


def benchmark_kicks_delete(since: datetime) -> int:
    """Drop the embedding kicks (drain tasks) the run queued on the ORM broker.

    Every committed ingest enqueues drain tasks at most once a second per process; the run's rows
    are gone, so those tasks would only wake a worker for nothing. Only ``embed_pending`` tasks
    queued since the run started are dropped: a lost kick costs nothing (the reconcile schedule
    kicks too), and every other task is left alone.
    """
    if settings.Q_CLUSTER.get("orm") is None:
        return 0
    from django_q.models import OrmQ

    dropped = []
    # The ORM broker stamps ``lock`` with the enqueue time; a cluster that pulled a task moved it.
    for entry in OrmQ.objects.filter(lock__gte=since).only("id", "payload"):
        try:
            task = entry.task
        except Exception:  # noqa: S112 - a payload we cannot read is not ours to judge
            continue
        started = task.get("started")
        if task.get("func") == "conversations.tasks.embed_pending" and (started is None or started >= since):
            dropped.append(entry.pk)
    OrmQ.objects.filter(pk__in=dropped).delete()
    return len(dropped)


class _Explained(Exception):
    """Ends the call whose statement was explained, rolling its transaction back."""


def statement_server_ms(*, call: Callable[[], object], statement_prefix: str) -> float:
    """PostgreSQL's own time for the first statement ``call`` runs that starts with
    ``statement_prefix``: it is run under ``EXPLAIN ANALYZE`` with its deferred constraints checked
    at once (so foreign-key checks count, as at commit), and the transaction is rolled back.

    The time is the server's planning plus execution, triggers included: no client, no network,
    no commit (``EXPLAIN ANALYZE`` adds its own timing overhead). It tells what part of a measured
    call the database needs whatever the code does. The call ends in an exception, so a ``timed``
    function inside it records a failure in this process's timings. ``statement_prefix`` must not
    match the ``SET`` and ``EXPLAIN`` statements this runs through the same cursor.
    """
    found: list[float] = []

    def explain(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        if found or not sql.lstrip().startswith(statement_prefix):
            return execute(sql, params, many, context)
        cursor = context["cursor"]
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)
        (plan,) = cursor.fetchone()[0]
        found.append(float(plan["Planning Time"]) + float(plan["Execution Time"]))
        raise _Explained

    with contextlib.suppress(_Explained), transaction.atomic(), connection.execute_wrapper(explain):
        call()
    if not found:
        raise RuntimeError(f"the call ran no statement starting with {statement_prefix!r}")
    return found[0]
