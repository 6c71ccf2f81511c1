"""The worker's in-process matrix of a tenant's joinable clusters (clustering/services/matrix.py):
it ranks exactly like the SQL scan, the whole pipeline partitions the same with it and without it,
and it stays equal to the database through commits, other processes' changes, rollbacks and a
stale state, within its bounds."""

from __future__ import annotations

import itertools
import random
from typing import Any

import numpy as np
import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from clustering.models import Cluster, ClusterMembership, ClusterStatus
from clustering.services import matrix as matrix_module
from clustering.services.assignment import cluster_best
from clustering.services.locking import tenants_clustering_lock
from clustering.services.matrix import ClusterMatrix, cluster_matrices_cached, cluster_matrices_clear, cluster_matrix
from clustering.services.moderation import (
    SYSTEM,
    cluster_answer,
    cluster_archive,
    cluster_merge,
    cluster_relabel,
    cluster_remove_message,
    cluster_split,
)
from clustering.services.scoring import (
    Centre,
    Probe,
    Thresholds,
    centre_load,
    cluster_candidates,
    cluster_candidates_centred,
)
from conversations.embeddings import get_embedder
from conversations.models import EmbeddingSpace, Message, Tenant
from conversations.services.embedding import embedding_drain
from conversations.services.embedding_spaces import embedding_space_for
from tests.clustering.conftest import Inbound, cluster_of
from tests.clustering.test_centred_scoring import OPENERS, TAILS, TOPICS, canonical
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db

DIMS = 384


class Boom(Exception):
    pass


def _space() -> EmbeddingSpace:
    return embedding_space_for(embedder=get_embedder())


def _random_clusters(tenant: Tenant, space: EmbeddingSpace, n: int, seed: int) -> np.ndarray:
    """``n`` clusters with random directions and sizes (a tenth archived); returns the sums."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 40, n)
    directions = rng.standard_normal((n, DIMS))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    sums = directions * sizes[:, None] * rng.uniform(0.5, 1.0, (n, 1))
    Cluster.objects.bulk_create(
        Cluster(
            tenant=tenant,
            space=space,
            representative_text=f"cluster {i}",
            vector_sum=sums[i].tolist(),
            size=int(sizes[i]),
            status=ClusterStatus.ARCHIVED if i % 10 == 9 else ClusterStatus.OPEN,
        )
        for i in range(n)
    )
    return sums


def _matrix(tenant: Tenant, space: EmbeddingSpace) -> ClusterMatrix:
    tenants_clustering_lock(tenant_ids=[tenant.pk])
    found = cluster_matrix(tenant_id=tenant.pk, space=space)
    assert found is not None
    return found


def _state(matrix: ClusterMatrix) -> dict[Any, tuple[bytes, float, str, str]]:
    """What the matrix holds, by cluster (the stored float32 sum exactly)."""
    return {
        cluster_id: (
            matrix.sums[row].tobytes(),
            float(matrix.sizes[row]),
            matrix.statuses[row],
            matrix.texts[row],
        )
        for cluster_id, row in matrix.rows.items()
    }


def _fresh_state(tenant: Tenant, space: EmbeddingSpace) -> dict[Any, tuple[bytes, float, str, str]]:
    """The state of a matrix loaded whole from the database now (the cache is left as it was)."""
    kept = dict(matrix_module._matrices)
    cluster_matrices_clear()
    try:
        return _state(_matrix(tenant, space))
    finally:
        cluster_matrices_clear()
        matrix_module._matrices.update(kept)


def _cached(tenant: Tenant) -> ClusterMatrix:
    (key,) = [key for key in cluster_matrices_cached() if key[0] == tenant.pk]
    return matrix_module._matrices[key]


def test_the_matrix_ranks_like_the_sql_scan(tenant) -> None:
    """The candidates and their scores, both rules, against the exact SQL scan."""
    space = _space()
    sums = _random_clusters(tenant, space, 400, seed=1)
    matrix = _matrix(tenant, space)
    assert len(matrix) == 360  # the archived tenth is not joinable
    rng = np.random.default_rng(2)
    total = sums.sum(axis=0)
    centre = Centre(total=total.copy(), count=300, norm_sum=300 * 3.0)
    assert centre.warm
    for _ in range(15):
        near = sums[rng.integers(len(sums))]
        vector = (near / np.linalg.norm(near) + 0.08 * rng.standard_normal(DIMS)).tolist()
        probe = Probe(vector)
        for kwargs in ({}, {"centre": centre}):
            search = cluster_candidates_centred if kwargs else cluster_candidates
            by_sql = search(tenant_id=tenant.pk, space=space, vector=probe, limit=10, exact=True, **kwargs)
            by_matrix = search(tenant_id=tenant.pk, space=space, vector=probe, limit=10, matrix=matrix, **kwargs)
            assert [c.id for c in by_matrix] == [c.id for c in by_sql]
            assert [c.score for c in by_matrix] == pytest.approx([c.score for c in by_sql], abs=1e-6)
            assert [c.similarity for c in by_matrix] == pytest.approx([c.similarity for c in by_sql], abs=1e-6)
            assert [c.status for c in by_matrix] == [c.status for c in by_sql]
            assert [c.representative_text for c in by_matrix] == [c.representative_text for c in by_sql]
    # Fewer joinable clusters than asked for: all of them, in the same order.
    small = TenantFactory()
    _random_clusters(small, space, 5, seed=3)
    few = _matrix(small, space)
    vector = rng.standard_normal(DIMS).tolist()
    by_sql = cluster_candidates(tenant_id=small.pk, space=space, vector=vector, limit=10)
    assert [c.id for c in cluster_candidates(tenant_id=small.pk, space=space, vector=vector, limit=10, matrix=few)] == [
        c.id for c in by_sql
    ]
    assert len(by_sql) == 5


def test_the_pipeline_partitions_the_same_with_the_matrix_and_with_sql(inbound: Inbound, settings) -> None:
    """Warm-up rule, centred rule, exact duplicates and short wording, through the worker: the
    matrix and the SQL search put every message in the same place, with the same similarity."""
    settings.CLUSTER_CENTERING_MIN_MESSAGES = 30
    settings.EMBEDDING_BATCH_SIZE = 7
    texts = [f"{opener}{topic}{tail}" for topic, opener, tail in itertools.product(TOPICS, OPENERS[:3], TAILS[:3])]
    texts += ["price of the hoodie?", "hoodie price?", "price of the hoodie?", *texts[:5]]
    random.Random(11).shuffle(texts)
    outcomes = []
    for max_clusters in (50_000, 0):  # the matrix, then SQL only
        settings.CLUSTER_MATRIX_MAX_CLUSTERS = max_clusters
        tenant = TenantFactory()
        messages = inbound(tenant, *texts)
        assert any(key[0] == tenant.pk for key in cluster_matrices_cached()) == bool(max_clusters)
        ordered = list(Message.objects.filter(pk__in=[m.pk for m in messages]).order_by("created_at", "id"))
        memberships = {m.message_id: m for m in ClusterMembership.objects.filter(tenant=tenant)}
        outcomes.append(
            (
                canonical([memberships[m.pk].cluster_id for m in ordered]),
                [memberships[m.pk].method for m in ordered],
                [memberships[m.pk].similarity for m in ordered],
            )
        )
    (partition, methods, similarities), (sql_partition, sql_methods, sql_similarities) = outcomes
    assert partition == sql_partition
    assert methods == sql_methods
    assert similarities == pytest.approx(sql_similarities, abs=1e-6)
    assert {"founder", "vector", "exact"} <= set(methods)
    assert len(set(partition)) < len(texts) / 3


def test_the_matrix_catches_up_with_what_others_changed(
    tenant, inbound: Inbound, settings, django_capture_on_commit_callbacks
) -> None:
    """A worker's matrix, confirmed by its commit, reads only the rows changed since (by revision)
    and ends equal to the database, whatever another process or a moderator did meanwhile."""
    settings.CLUSTER_SHORT_MESSAGE_CHARS = 0
    with django_capture_on_commit_callbacks(execute=True):
        messages = inbound(
            tenant,
            "how much does the premium plan cost per month",
            "how much does the premium plan cost each month",
            "my parcel never arrived at the delivery address",
            "my parcel never arrived at my delivery address",
            "can I pay for my order with a credit card",
            "when is the next live stream happening",
            "how do I reset the password of my account",
            "is the shop open on sunday afternoon",
            "I want a refund for the broken headphones",
            "do you ship your products to canada",
        )
    space = cluster_of(messages[0]).space
    mine = _cached(tenant)
    assert mine.owner is None and mine.confirmed == mine.revision > 0  # confirmed by the commit

    # Meanwhile, elsewhere (another worker process, moderators): this process's matrix is put
    # aside, the others work with their own.
    cluster_matrices_clear()
    plan, parcel, card, live, password, shop = (cluster_of(messages[i]) for i in (0, 2, 4, 5, 6, 7))
    cluster_answer(cluster=plan, answer="Ten euros a month.", actor=SYSTEM)
    cluster_relabel(cluster=card, label="payments", actor=SYSTEM)
    cluster_archive(cluster=live, actor=SYSTEM)
    cluster_merge(target=password, sources=[shop], actor=SYSTEM)
    cluster_split(cluster=parcel, message_ids=[messages[3].pk], actor=SYSTEM)
    cluster_remove_message(cluster=plan, message_id=messages[1].pk, actor=SYSTEM)
    inbound(tenant, "do you deliver to canada", "where is my refund for the headphones")
    assert _state(mine) != _fresh_state(tenant, space)

    cluster_matrices_clear()
    matrix_module._matrices[(tenant.pk, space.pk, space.activated_at)] = mine
    with CaptureQueriesContext(connection) as queries:
        caught_up = _matrix(tenant, space)
    assert caught_up is mine
    reads = [q["sql"] for q in queries.captured_queries if "vector_send" in q["sql"]]
    assert len(reads) == 1 and "revision >" in reads[0] and "status IN" not in reads[0]  # no full load
    assert _state(mine) == _fresh_state(tenant, space)
    assert mine.statuses[mine.rows[plan.pk]] == ClusterStatus.ANSWERED
    assert live.pk not in mine.rows and shop.pk not in mine.rows


def test_a_rolled_back_transaction_leaves_nothing_in_the_matrix(
    tenant, inbound: Inbound, settings, django_capture_on_commit_callbacks
) -> None:
    settings.CLUSTER_SHORT_MESSAGE_CHARS = 0
    with django_capture_on_commit_callbacks(execute=True):
        first = inbound(
            tenant,
            "how much does the premium plan cost per month",
            "my parcel never arrived at the delivery address",
            "can I pay for my order with a credit card",
        )
    space = cluster_of(first[0]).space
    mine = _cached(tenant)
    committed = _state(mine)
    assert committed == _fresh_state(tenant, space)

    later = inbound(
        tenant,
        "how much does the premium plan cost each month",  # joins a cluster
        "is the shop open on sunday afternoon",  # starts one
        drain=False,
    )

    def assign_then_roll_back() -> None:
        with transaction.atomic():
            embedding_drain(seconds=30)
            assert ClusterMembership.objects.filter(message__in=later).count() == 2
            raise Boom

    with pytest.raises(Boom):
        assign_then_roll_back()
    assert not ClusterMembership.objects.filter(message__in=later).exists()
    # The matrix took the rolled-back join and new cluster in (it only holds what the database
    # returned), but no commit confirmed them ...
    assert _cached(tenant) is mine and mine.owner is not None
    assert _state(mine) != committed
    # ... so the next transaction reads again what they touched, and the matrix is the database's.
    with CaptureQueriesContext(connection) as queries:
        assert _matrix(tenant, space) is mine
    assert any("OR id = ANY" in q["sql"] for q in queries.captured_queries)
    assert _state(mine) == committed == _fresh_state(tenant, space)

    # And the messages, assigned for real, land where the SQL search puts them.
    embedding_drain(seconds=30)
    assert cluster_of(later[0]) == cluster_of(first[0])
    assert cluster_of(later[1]) not in {cluster_of(m) for m in first}


def test_a_stale_matrix_is_dropped_and_sql_decides(
    tenant, inbound: Inbound, django_capture_on_commit_callbacks
) -> None:
    """Should a matrix ever miss a change (which the revisions prevent), the join it proposes
    finds the cluster not joinable, the matrix is dropped and the SQL search decides."""
    with django_capture_on_commit_callbacks(execute=True):
        (question,) = inbound(tenant, "how much does the premium plan cost per month")
    archived = cluster_of(question)
    cluster_archive(cluster=archived, actor=SYSTEM)
    mine = _cached(tenant)
    mine.revision = mine.confirmed = 10**15  # blind to the archive
    assert archived.pk in mine.rows

    (copy,) = inbound(tenant, "How much does the premium plan cost per month?")  # an exact twin
    landed = cluster_of(copy)
    assert landed != archived
    archived.refresh_from_db()
    assert archived.size == 1 and archived.status == ClusterStatus.ARCHIVED
    assert all(matrix_module._matrices[key] is not mine for key in cluster_matrices_cached())


def test_the_matrix_cache_is_bounded(inbound: Inbound, settings) -> None:
    settings.CLUSTER_MATRIX_CACHE_ENTRIES = 2
    tenants = [TenantFactory() for _ in range(3)]
    for tenant in tenants:
        inbound(tenant, "how much does the premium plan cost per month")
    assert [key[0] for key in cluster_matrices_cached()] == [tenants[1].pk, tenants[2].pk]  # least recent out

    space = _space()
    settings.CLUSTER_MATRIX_MAX_CLUSTERS = 1
    second = inbound(tenants[0], "my parcel never arrived at the delivery address")
    tenants_clustering_lock(tenant_ids=[tenants[0].pk])
    assert cluster_matrix(tenant_id=tenants[0].pk, space=space) is None  # 2 clusters: searched in SQL
    assert Cluster.objects.filter(tenant=tenants[0]).count() == 2 and cluster_of(second[0]).size == 1

    settings.CLUSTER_MATRIX_MAX_CLUSTERS = 50_000
    settings.CLUSTER_MATRIX_CACHE_MB = 0  # no room for any matrix with a cluster in it
    assert cluster_matrix(tenant_id=tenants[0].pk, space=space) is None
    assert all(key[0] != tenants[0].pk for key in cluster_matrices_cached())


def test_moderation_reads_like_the_worker(tenant, inbound: Inbound) -> None:
    """Re-homing a removed message (moderation searches in SQL) picks what the matrix would."""
    messages = inbound(
        tenant,
        "how much does the premium plan cost per month",
        "my parcel never arrived at the delivery address",
        "how much does the premium plan cost each month",
    )
    space = cluster_of(messages[0]).space
    vector = get_embedder().embed([messages[2].text])[0]
    centre = centre_load(tenant_id=tenant.pk, space=space)
    thresholds = Thresholds(similarity=0.38, warmup_similarity=0.6, text_similarity=90, short_chars=0)
    kwargs = {"tenant_id": tenant.pk, "space": space, "vector": vector, "centre": centre, "thresholds": thresholds}
    by_sql = cluster_best(**kwargs, exclude=cluster_of(messages[2]).pk)
    by_matrix = cluster_best(**kwargs, exclude=cluster_of(messages[2]).pk, matrix=_matrix(tenant, space))
    assert [c.id for c in by_matrix[1]] == [c.id for c in by_sql[1]]
    assert (by_matrix[0] and by_matrix[0].id) == (by_sql[0] and by_sql[0].id)
