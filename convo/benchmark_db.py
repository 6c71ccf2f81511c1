"""Database chores shared by the benchmark commands: the URL their helper processes connect with,
deleting a benchmark tenant's rows fast, and dropping the embedding kicks a run queued.

Kept out of any one command so the ingest, embeddings, clustering and knowledge benchmarks share
one copy (they used to import these from the ingest command's module).
"""

from __future__ import annotations

import os
from datetime import datetime

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
    yet applied to this database. Django's foreign keys are DEFERRABLE INITIALLY DEFERRED, so in
    one transaction the order does not matter beyond rows found through the tenant's conversations.
    """
    counts: dict[str, int] = {}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.conrelid::regclass::text, a.attname, c.confrelid::regclass::text
              FROM pg_constraint c
              JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
             WHERE c.contype = 'f' AND array_length(c.conkey, 1) = 1
               AND c.confrelid IN ('conversations_tenant'::regclass, 'conversations_conversation'::regclass,
                                   'conversations_message'::regclass)
            """
        )
        references = cursor.fetchall()
        # Rows reachable only through a conversation or message (no tenant column of their own).
        by_tenant = {table for table, column, target in references if target == "conversations_tenant"}
        for table, column, target in references:
            if target != "conversations_tenant" and table not in by_tenant:
                cursor.execute(
                    f'DELETE FROM {table} WHERE "{column}" IN (SELECT id FROM {target} WHERE tenant_id = %s)',
                    [tenant_id],
                )
                counts[table] = counts.get(table, 0) + cursor.rowcount
        for table, column, target in references:
            if target == "conversations_tenant":
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
