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
    if not connection.in_atomic_block:
        raise RuntimeError("the clustering lock is held until commit: call it inside transaction.atomic()")
    with connection.cursor() as cursor:
        for tenant_id in sorted(set(tenant_ids)):
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_NAMESPACE, int(tenant_id)])
