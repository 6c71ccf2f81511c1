"""A model switch moves clusters into the new embedding space: centroids rebuilt from the members'
new vectors, so look-alike messages keep joining the clusters moderators already know."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection

from clustering.models import Cluster
from conversations.models import EmbeddingSpace
from conversations.services.embedding_spaces import embedding_spaces_forget
from tests.clustering.conftest import Inbound, cluster_of

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh() -> None:
    cache.clear()
    embedding_spaces_forget()


def test_clusters_move_to_the_new_space_and_keep_taking_members(tenant, inbound: Inbound) -> None:
    first, second, other = inbound(
        tenant,
        "how much does the premium plan cost per month",
        "how much does the premium plan cost each month",
        "my parcel never arrived at the delivery address",
    )
    shared = cluster_of(first)
    assert shared == cluster_of(second) and shared.space.dimensions == 384

    call_command("convo_embeddings_switch", "--backend=hashing", "--dimensions=128", stdout=StringIO(), stderr=StringIO())

    new = EmbeddingSpace.objects.get(state="active")
    assert new.dimensions == 128
    assert set(Cluster.objects.filter(tenant=tenant).values_list("space_id", flat=True)) == {new.pk}
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT vector_dims(c.vector_sum), c.vector_sum <-> (
                   SELECT sum(e.embedding) FROM clustering_clustermembership m
                     JOIN conversations_messageembedding e ON e.item_id = m.message_id AND e.space_id = %s
                    WHERE m.cluster_id = c.id)
              FROM clustering_cluster c WHERE c.id = %s
            """,
            [new.pk, shared.pk],
        )
        dims, gap = cursor.fetchone()
    assert dims == 128 and gap < 1e-4

    (later,) = inbound(tenant, "how much does the premium plan cost every month")
    assert cluster_of(later) == shared
    assert cluster_of(other) != shared
    shared.refresh_from_db()
    assert shared.size == 3
