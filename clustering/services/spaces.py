"""Clusters follow the active embedding space: when a model switch activates a new space, each
cluster's centroid is rebuilt from its members' vectors in that space (the switch has already
embedded every member there), so assignment keeps joining messages to the clusters moderators
know instead of starting over."""

from __future__ import annotations

from django.db import connection

from clustering.models import Cluster, ClusterMembership
from conversations.models import EmbeddingSpace, MessageEmbedding


def clusters_move_to_space(*, old: EmbeddingSpace, new: EmbeddingSpace) -> int:
    """Move the clusters of ``old`` into ``new``, their vector sums recomputed there. A cluster
    none of whose members has a vector in ``new`` stays behind (listed, never joined). Runs in
    the activation's transaction, which holds the spaces lock exclusively: no worker is assigning
    meanwhile. Returns how many clusters moved."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {Cluster._meta.db_table} AS c
               SET space_id = %s, vector_sum = s.total, updated_at = now()
              FROM (SELECT m.cluster_id, sum(e.embedding) AS total
                      FROM {ClusterMembership._meta.db_table} AS m
                      JOIN {MessageEmbedding._meta.db_table} AS e ON e.item_id = m.message_id AND e.space_id = %s
                     GROUP BY m.cluster_id) AS s
             WHERE c.id = s.cluster_id AND c.space_id = %s
            """,
            [new.pk, new.pk, old.pk],
        )
        return cursor.rowcount
