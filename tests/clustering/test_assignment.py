"""Online assignment: inbound messages join look-alike clusters or start new ones, through the real
embedding worker and database."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from clustering.models import Cluster, ClusteringPolicy, ClusterMembership, JoinMethod
from clustering.services.assignment import text_key
from conversations.models import Role
from tests.clustering.conftest import Inbound, cluster_of
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db


def _sum_matches_members(cluster: Cluster) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.vector_sum <-> (SELECT sum(e.embedding) FROM clustering_clustermembership m
                                       JOIN conversations_messageembedding e
                                         ON e.item_id = m.message_id AND e.space_id = c.space_id
                                      WHERE m.cluster_id = c.id)
              FROM clustering_cluster c WHERE c.id = %s
            """,
            [cluster.pk],
        )
        return float(cursor.fetchone()[0]) < 1e-4


def test_look_alike_questions_share_a_cluster_and_others_do_not(tenant, inbound: Inbound) -> None:
    first, second, third = inbound(
        tenant,
        "how much does the premium plan cost per month",
        "how much does the premium plan cost each month",
        "my parcel never arrived at the delivery address",
    )
    assert cluster_of(first) == cluster_of(second)
    assert cluster_of(third) != cluster_of(first)
    shared = cluster_of(first)
    assert shared.size == 2
    assert shared.representative_id == first.pk
    assert shared.first_message_at == first.created_at
    assert shared.last_message_at == second.created_at
    assert _sum_matches_members(shared)
    founder, joiner = ClusterMembership.objects.get(message=first), ClusterMembership.objects.get(message=second)
    assert founder.method == JoinMethod.FOUNDER and founder.similarity == 1.0
    assert joiner.method == JoinMethod.VECTOR and 0.62 <= joiner.similarity < 1.0


def test_exact_duplicates_join_by_text_key(tenant, inbound: Inbound) -> None:
    original, copy = inbound(tenant, "When is the next live?", "  when is the NEXT live ")
    assert text_key(original.text) == text_key(copy.text)
    membership = ClusterMembership.objects.get(message=copy)
    assert membership.method == JoinMethod.EXACT
    assert membership.cluster_id == cluster_of(original).pk


def test_only_inbound_user_messages_are_clustered(tenant, inbound: Inbound) -> None:
    (reply,) = inbound(tenant, "thanks for asking, the plan costs ten euros", role=Role.ASSISTANT)
    assert not ClusterMembership.objects.filter(message=reply).exists()
    assert Cluster.objects.filter(tenant=tenant).count() == 0


def test_clusters_never_cross_tenants(tenant, inbound: Inbound) -> None:
    other = TenantFactory()
    (mine,) = inbound(tenant, "how do I reset my password")
    (theirs,) = inbound(other, "how do I reset my password")
    assert cluster_of(mine) != cluster_of(theirs)
    assert cluster_of(theirs).tenant_id == other.pk


def test_tenant_threshold_overrides_the_setting(tenant, inbound: Inbound) -> None:
    ClusteringPolicy.objects.create(tenant=tenant, warmup_similarity_threshold=0.999, text_similarity_threshold=100)
    first, second = inbound(
        tenant, "how much does the premium plan cost per month", "how much does the premium plan cost each month"
    )
    assert cluster_of(first) != cluster_of(second)


def test_short_messages_join_by_wording(tenant, inbound: Inbound, settings) -> None:
    # The vectors alone would not pass; the wording does.
    settings.CLUSTER_WARMUP_SIMILARITY_THRESHOLD = 0.99
    first, second = inbound(tenant, "price of the hoodie?", "hoodie price?")
    membership = ClusterMembership.objects.get(message=second)
    assert membership.method == JoinMethod.TEXT
    assert membership.cluster_id == cluster_of(first).pk


def test_a_batch_of_copies_makes_one_cluster(tenant, inbound: Inbound) -> None:
    messages = inbound(tenant, *["is the shop open on sunday?"] * 25)
    assert {cluster_of(m).pk for m in messages} == {cluster_of(messages[0]).pk}
    assert cluster_of(messages[0]).size == 25


def test_a_tenant_with_many_clusters_is_searched_through_hnsw_with_the_same_result(tenant, inbound, settings) -> None:
    from clustering.services.assignment import cluster_candidates, tenant_uses_hnsw
    from conversations.embeddings import get_embedder

    settings.CLUSTER_HNSW_INDEX = True  # opt-in: the space's cluster index is built with its other indexes
    inbound(
        tenant,
        "how much does the premium plan cost per month",
        "my parcel never arrived at the delivery address",
        "can I pay with a credit card",
        "where is my refund",
    )
    other = TenantFactory()
    inbound(other, "how much does the premium plan cost per month", "is the shop open on sunday")
    space = Cluster.objects.filter(tenant=tenant).first().space
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [f"cluster_hnsw_space_{space.pk}"])
        assert "status" in cursor.fetchone()[0]
    vector = get_embedder().embed(["how much is the premium plan per month"])[0]
    exact = cluster_candidates(tenant_id=tenant.pk, space=space, vector=vector, limit=3, exact=True)
    settings.CLUSTER_EXACT_SCAN_MAX = 3
    assert tenant_uses_hnsw(tenant_id=tenant.pk, space=space)
    settings.CLUSTER_EXACT_SCAN_MAX = 4
    assert not tenant_uses_hnsw(tenant_id=tenant.pk, space=space)
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        approximate = cluster_candidates(tenant_id=tenant.pk, space=space, vector=vector, limit=3, exact=False)
        query = next(q["sql"] for q in queries.captured_queries if "representative_text" in q["sql"])
        with connection.cursor() as cursor:  # the query can use the partial index (its WHERE implies the predicate)
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("EXPLAIN " + query)
            assert f"cluster_hnsw_space_{space.pk}" in " ".join(row[0] for row in cursor.fetchall())
    assert [c.id for c in approximate] == [c.id for c in exact]
    assert all(Cluster.objects.get(pk=c.id).tenant_id == tenant.pk for c in approximate)
    # More than the tenant has: the short HNSW answer falls back to the exact scan, never another tenant.
    everything = cluster_candidates(tenant_id=tenant.pk, space=space, vector=vector, limit=10, exact=False)
    assert len(everything) == 4


def test_the_cluster_hnsw_index_is_opt_in(tenant, inbound, settings) -> None:
    """Off (the default): no index is built with the space, and no tenant is ever counted for it."""
    from clustering.services.assignment import tenant_uses_hnsw

    (first,) = inbound(tenant, "how much does the premium plan cost per month")
    space = cluster_of(first).space
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s", [f"cluster_hnsw_space_{space.pk}"])
        assert cursor.fetchone() is None
    settings.CLUSTER_EXACT_SCAN_MAX = 0
    with CaptureQueriesContext(connection) as queries:
        assert not tenant_uses_hnsw(tenant_id=tenant.pk, space=space)
    assert not queries.captured_queries
