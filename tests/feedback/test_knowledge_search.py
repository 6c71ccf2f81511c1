"""Knowledge search meets conversation search's correctness bars: recall@10 against brute force on
both the exact-scan and the HNSW path, a tenant's results never hold another tenant's or an
inactive entry, and asking for more rows than HNSW can give still gives the exact top."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection

from conversations.models import EmbeddingSpace, SpaceState, Tenant
from conversations.services.embedding_spaces import embedding_space_index
from feedback.models import KnowledgeEmbedding, KnowledgeEntry
from feedback.retrieval import knowledge_neighbours
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db

DIMS = 32
SIZES = {"small": 40, "large": 3000, "crowd": 6000}


@pytest.fixture
def corpus(settings):
    settings.SEARCH_EXACT_SCAN_MAX_ROWS = 100  # "small" is scanned exactly, "large" goes to HNSW
    rng = np.random.default_rng(11)
    space = EmbeddingSpace.objects.create(model_id="test:random-kb", dimensions=DIMS, state=SpaceState.ACTIVE)
    tenants = {name: TenantFactory() for name in SIZES}
    data = {}
    for name, size in SIZES.items():
        tenant = tenants[name]
        entries = KnowledgeEntry.objects.bulk_create(
            [
                KnowledgeEntry(tenant=tenant, question=f"{name} q{i}", answer=f"a{i}", active=i % 10 != 0)
                for i in range(size)
            ],
            batch_size=5000,
        )
        vectors = rng.normal(size=(size, DIMS)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        KnowledgeEmbedding.objects.bulk_create(
            [
                KnowledgeEmbedding(item=e, tenant=tenant, space=space, embedding=v)
                for e, v in zip(entries, vectors, strict=True)
            ],
            batch_size=5000,
        )
        active = np.array([e.active for e in entries])
        data[name] = (tenant, vectors[active], np.array([e.pk for e in entries])[active])
    with connection.cursor() as cursor:
        # Fresh statistics, so the deferred foreign-key checks are planned for these row counts
        # (plans cached while the tables were empty would scan them once per row).
        cursor.execute(f"ANALYZE {KnowledgeEntry._meta.db_table}")
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # before an index build in this transaction
    embedding_space_index(space=space)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {KnowledgeEmbedding._meta.db_table}")
    return space, data, rng


def recall(space: EmbeddingSpace, tenant: Tenant, vectors, ids, rng, *, queries: int = 20, k: int = 10):
    found_total, strategies = 0.0, set()
    for _ in range(queries):
        query = rng.normal(size=DIMS).astype(np.float32)
        query /= np.linalg.norm(query)
        truth = set(ids[np.argsort(-(vectors @ query))[:k]])
        got, strategy = knowledge_neighbours(tenant=tenant, space=space, vector=query.tolist(), limit=k)
        assert len(got) == min(k, len(ids))
        assert {entry_id for entry_id, _ in got} <= set(ids)  # the tenant's active entries only
        found_total += len(truth & {entry_id for entry_id, _ in got}) / len(truth)
        strategies.add(strategy)
    return found_total / queries, strategies


def test_a_small_tenant_is_scanned_exactly(corpus) -> None:
    space, data, rng = corpus
    tenant, vectors, ids = data["small"]
    score, strategies = recall(space, tenant, vectors, ids, rng)
    assert strategies == {"exact"} and score == 1.0


def test_a_large_tenant_goes_through_hnsw_with_high_recall(corpus) -> None:
    space, data, rng = corpus
    tenant, vectors, ids = data["large"]
    score, strategies = recall(space, tenant, vectors, ids, rng)
    assert strategies <= {"hnsw", "hnsw+exact"} and "hnsw" in strategies
    assert score >= 0.95


def test_more_rows_than_the_hnsw_candidate_list_are_still_the_exact_top(corpus, settings) -> None:
    """With ``ef_search`` capped at 10, an HNSW scan can yield at most 10 candidates: asking for 50
    must still give the true 50 nearest of the tenant's. The ef_search needed is past the cap, so
    the tenant's rows are scanned instead of HNSW coming back short."""
    space, data, rng = corpus
    settings.SEARCH_EF_SEARCH_MAX = 10
    settings.SEARCH_EF_SEARCH_MIN = 10
    tenant, vectors, ids = data["large"]
    query = rng.normal(size=DIMS).astype(np.float32)
    query /= np.linalg.norm(query)
    got, strategy = knowledge_neighbours(tenant=tenant, space=space, vector=query.tolist(), limit=50)
    assert strategy == "exact"
    assert [entry_id for entry_id, _ in got] == list(ids[np.argsort(-(vectors @ query))[:50]])
