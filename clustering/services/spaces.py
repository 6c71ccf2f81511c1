"""Clusters follow the active embedding space: when a model switch activates a new space, each
cluster's centroid is rebuilt from its members' vectors in that space (the switch has already
embedded every member there), so assignment keeps joining messages to the clusters moderators
know instead of starting over."""

from __future__ import annotations

from django.db import connection, transaction

from clustering.models import Cluster, ClusterMembership
from clustering.services.locking import tenants_clustering_lock
from clustering.services.moderation import cluster_recompute
from conversations.models import EmbeddingSpace, MessageEmbedding

_MOVE = f"""
UPDATE {Cluster._meta.db_table} AS c
   SET space_id = %s, vector_sum = s.total, updated_at = now()
  FROM (SELECT m.cluster_id, sum(e.embedding) AS total
          FROM {ClusterMembership._meta.db_table} AS m
          JOIN {MessageEmbedding._meta.db_table} AS e ON e.item_id = m.message_id AND e.space_id = %s
         GROUP BY m.cluster_id) AS s
 WHERE c.id = s.cluster_id AND c.space_id <> %s
"""


def clusters_move_to_space(*, old: EmbeddingSpace, new: EmbeddingSpace) -> int:
    """Move the clusters of ``old`` into ``new``, their vector sums recomputed there. A cluster
    none of whose members has a vector in ``new`` yet stays behind until
    ``clusters_follow_space`` (after the switch's catch-up). Runs in the activation's transaction;
    it takes the clustering locks of the tenants concerned (after the spaces lock, the order the
    worker uses), so no moderator action interleaves. Returns how many clusters moved."""
    tenants_clustering_lock(tenant_ids=_tenants_with_clusters())
    with connection.cursor() as cursor:
        cursor.execute(_MOVE + " AND c.space_id = %s", [new.pk, new.pk, new.pk, old.pk])
        return cursor.rowcount


@transaction.atomic
def clusters_follow_space(*, space: EmbeddingSpace) -> int:
    """After a switch's catch-up pass has embedded the stragglers: move every cluster still in
    another space that now has a member vector in ``space``, then recompute every cluster of
    ``space`` from its members (size from all members, the sum from their vectors there).
    Returns how many clusters moved."""
    tenants_clustering_lock(tenant_ids=_tenants_with_clusters())
    with connection.cursor() as cursor:
        cursor.execute(_MOVE, [space.pk, space.pk, space.pk])
        moved = cursor.rowcount
    cluster_recompute(cluster_ids=list(Cluster.objects.filter(space=space).values_list("id", flat=True)))
    return moved


def _tenants_with_clusters() -> list[int]:
    return list(Cluster.objects.order_by().values_list("tenant_id", flat=True).distinct())
