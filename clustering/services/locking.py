"""The tenant's clustering lock: every change to a tenant's clusters (assignment, moderation) runs
under it, so two workers can never both decide that a question is new and start two clusters for
it, and a moderator's merge never interleaves with a join into the same clusters."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connection

# The first key of the two-key advisory lock: "convo clusters" (any int4 unique to this use).
_NAMESPACE = 0x636C7573  # "clus"


def tenants_clustering_lock(*, tenant_ids: Iterable[int]) -> None:
    """Take the clustering locks of these tenants until the transaction ends. Always in ascending
    order, so two transactions locking overlapping tenants cannot deadlock."""
    with connection.cursor() as cursor:
        for sql, params in tenants_clustering_lock_statements(tenant_ids=tenant_ids):
            cursor.execute(sql, params)


def tenants_clustering_lock_statements(*, tenant_ids: Iterable[int]) -> list[tuple[str, list[int]]]:
    """The statements that take these tenants' locks, in the order to run them, for a caller
    that sends them in one round trip with what it reads under the locks (each statement of a
    round trip still waits for its lock before the next one starts and takes its snapshot)."""
    if not connection.in_atomic_block:
        raise RuntimeError("the clustering lock is held until commit: call it inside transaction.atomic()")
    return [("SELECT pg_advisory_xact_lock(%s, %s)", [_NAMESPACE, int(t)]) for t in sorted(set(tenant_ids))]
