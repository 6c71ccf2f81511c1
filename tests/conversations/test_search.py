"""Search is correct under selective filters: recall@10 against brute force, result counts of
min(k, matching rows), on both the exact-scan and the HNSW path."""

from __future__ import annotations

import numpy as np
import pytest

from conversations.models import Conversation, EmbeddingSpace, Message, MessageEmbedding, SpaceState
from conversations.search import Ranking, SearchFilters, message_neighbours, message_search
from conversations.services.embedding_spaces import embedding_space_index
from tests.factories import ConversationFactory, TenantFactory

pytestmark = pytest.mark.django_db

DIMS = 32
TOTAL = 20_000
# user -> number of messages: 0.1%, 1% and 10% of the rows, the rest spread over other users.
USERS = {"tiny": 20, "small": 200, "large": 2000}


@pytest.fixture
def corpus(tenant):
    rng = np.random.default_rng(7)
    space = EmbeddingSpace.objects.create(model_id="test:random", dimensions=DIMS, state=SpaceState.ACTIVE)
    owners = [name for name, count in USERS.items() for _ in range(count)]
    owners += [f"crowd-{i % 50}" for i in range(TOTAL - len(owners))]
    # The large user's messages are spread over five conversations of a crowd user's size, so the
    # planner's estimate of their count (rows per conversation x conversations) is about right.
    conversations = {
        user: [
            ConversationFactory(tenant=tenant, external_user_id=user, channel="sms" if user == "large" else "web")
            for _ in range(5 if user == "large" else 1)
        ]
        for user in sorted(set(owners))
    }
    vectors = rng.normal(size=(TOTAL, DIMS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    messages = Message.objects.bulk_create(
        [
            Message(tenant=tenant, conversation=conversations[user][i % len(conversations[user])], text=f"m{i}")
            for i, user in enumerate(owners)
        ],
        batch_size=5000,
    )
    MessageEmbedding.objects.bulk_create(
        [
            MessageEmbedding(item=m, conversation_id=m.conversation_id, tenant=tenant, space=space, embedding=v)
            for m, v in zip(messages, vectors, strict=True)
        ],
        batch_size=5000,
    )
    from django.db import connection

    with connection.cursor() as cursor:
        # Fresh statistics first: the deferred foreign-key checks run through plans this connection
        # may have cached while the tables were nearly empty (a sequential scan per row of 20k rows,
        # past the statement timeout); ANALYZE invalidates those plans.
        cursor.execute(
            f"ANALYZE {Message._meta.db_table}, {Conversation._meta.db_table}, {MessageEmbedding._meta.db_table}"
        )
        # The load's deferred foreign-key checks must run before an index can be built in this transaction.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    embedding_space_index(space=space)  # built after the load: much faster than 20k inserts into it
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {MessageEmbedding._meta.db_table}")
    ids = np.array([m.id for m in messages])
    return space, vectors, ids, np.array(owners), rng


def brute_force(vectors, ids, mask, query, k):
    sims = vectors[mask] @ query
    order = np.argsort(-sims)[:k]
    return set(ids[mask][order])


@pytest.mark.slow
def test_recall_at_10_under_selective_filters(corpus, tenant, settings):
    """With the default cap every per-user query is an exact scan; with a cap of 100 the 10% user
    (and the unfiltered query) go through HNSW with a raised ef_search."""
    space, vectors, ids, owners, rng = corpus
    # The strategy under test is the one the capped count picks; the planner-estimate shortcut
    # (tested below with fresh statistics) depends on statistics earlier tests leave behind.
    settings.SEARCH_COUNT_SKIP_FACTOR = 0
    queries = rng.normal(size=(20, DIMS)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for exact_cap, user in [(cap, user) for cap in (10_000, 100) for user in [*USERS, None]]:
        settings.SEARCH_EXACT_SCAN_MAX_ROWS = exact_cap
        mask = owners == user if user else np.ones(len(owners), dtype=bool)
        recalls = []
        for query in queries:
            expected = brute_force(vectors, ids, mask, query, 10)
            found, strategy, _ = message_neighbours(
                tenant=tenant, space=space, vector=query.tolist(), filters=SearchFilters(user_id=user), limit=10
            )
            assert len(found) == min(10, int(mask.sum()))
            recalls.append(len(expected & {row_id for row_id, _ in found}) / len(expected))
        # Past the cap, HNSW, unless the ef_search it would need (10 / share x margin) is more
        # than allowed: then the rows are scanned (the 1% user: 2,000 > 1,000).
        needed = 10 / (max(int(mask.sum()), exact_cap) / TOTAL) * settings.SEARCH_EF_SEARCH_MARGIN
        scanned = mask.sum() <= exact_cap or needed > settings.SEARCH_EF_SEARCH_MAX
        expected_strategy = "exact" if scanned else "hnsw"
        assert strategy.startswith(expected_strategy), (user, strategy)
        assert np.mean(recalls) >= 0.95, (user, exact_cap, np.mean(recalls))


@pytest.mark.slow
def test_a_filter_too_selective_for_the_allowed_ef_search_is_scanned(corpus, tenant, settings):
    """The 1% user's 200 rows, past a cap of 100: HNSW would need ef_search 2,000 to find 10 of
    them, more than SEARCH_EF_SEARCH_MAX allows, so they are scanned: exact, whatever the cap."""
    space, vectors, ids, owners, rng = corpus
    settings.SEARCH_COUNT_SKIP_FACTOR = 0
    settings.SEARCH_EXACT_SCAN_MAX_ROWS = 100
    settings.SEARCH_EF_SEARCH_MAX = 1000
    mask = owners == "small"
    for query in rng.normal(size=(5, DIMS)).astype(np.float32):
        query /= np.linalg.norm(query)
        found, strategy, matching = message_neighbours(
            tenant=tenant, space=space, vector=query.tolist(), filters=SearchFilters(user_id="small"), limit=10
        )
        assert (strategy, matching) == ("exact", 101)
        assert [row_id for row_id, _ in found] == [ids[mask][i] for i in np.argsort(-(vectors[mask] @ query))[:10]]


@pytest.mark.slow
def test_the_count_is_skipped_when_the_planner_expects_far_more_rows_than_the_cap(corpus, tenant, settings):
    """Unfiltered over 20k rows with a cap of 100: the planner's estimate is far above 2x the cap,
    so no capped count runs, HNSW answers, and recall holds; with the skip turned off the count runs."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    space, vectors, ids, owners, rng = corpus
    with connection.cursor() as cursor:  # the planner's estimate needs statistics, as autovacuum keeps them
        cursor.execute(
            f"ANALYZE {Message._meta.db_table}, {Conversation._meta.db_table}, {MessageEmbedding._meta.db_table}"
        )
    settings.SEARCH_EXACT_SCAN_MAX_ROWS = 100
    query = rng.normal(size=DIMS).astype(np.float32)
    query /= np.linalg.norm(query)
    for factor, counted in ((2.0, False), (0.0, True)):
        settings.SEARCH_COUNT_SKIP_FACTOR = factor
        with CaptureQueriesContext(connection) as queries:
            found, strategy, matching = message_neighbours(
                tenant=tenant, space=space, vector=query.tolist(), filters=SearchFilters(), limit=10
            )
        assert any("count(*)" in q["sql"] for q in queries.captured_queries) is counted
        assert strategy.startswith("hnsw") and matching == 101
        expected = brute_force(vectors, ids, np.ones(len(owners), dtype=bool), query, 10)
        assert len(expected & {row_id for row_id, _ in found}) >= 9


def test_result_count_is_min_of_k_and_matching_rows(tenant, other_tenant):
    space = EmbeddingSpace.objects.create(model_id="test:small", dimensions=3, state=SpaceState.ACTIVE)
    embedding_space_index(space=space)
    mine = ConversationFactory(tenant=tenant, external_user_id="u")
    theirs = ConversationFactory(tenant=other_tenant, external_user_id="u")
    deleted = ConversationFactory(tenant=tenant, external_user_id="u")
    for conversation, count in ((mine, 4), (theirs, 10), (deleted, 10)):
        for i in range(count):
            message = Message.objects.create(tenant=conversation.tenant, conversation=conversation, text=f"t{i}")
            MessageEmbedding.objects.create(
                item=message, conversation=conversation, tenant=conversation.tenant, space=space, embedding=[1, i, 0]
            )
    Conversation.objects.filter(pk=deleted.pk).update(deleted_at="2020-01-01T00:00:00Z")

    found, _, matching = message_neighbours(
        tenant=tenant, space=space, vector=[1, 0, 0], filters=SearchFilters(user_id="u"), limit=10
    )
    assert matching == 4
    assert len(found) == 4
    assert {Message.objects.get(pk=i).conversation_id for i, _ in found} == {mine.pk}
    assert [round(s, 6) for _, s in found] == sorted((round(s, 6) for _, s in found), reverse=True)
    none, _, _ = message_neighbours(
        tenant=TenantFactory(), space=space, vector=[1, 0, 0], filters=SearchFilters(), limit=10
    )
    assert none == []


def test_ranking_blends_recency_and_channel_and_adapts_the_threshold(tenant):
    from datetime import timedelta

    from django.utils import timezone

    space = EmbeddingSpace.objects.create(model_id="test:rank", dimensions=2, state=SpaceState.ACTIVE)
    embedding_space_index(space=space)
    web = ConversationFactory(tenant=tenant, channel="web")
    sms = ConversationFactory(tenant=tenant, channel="sms")
    now = timezone.now()

    def add(conversation, vector, days_old):
        message = Message.objects.create(tenant=tenant, conversation=conversation, text=str(vector))
        Message.objects.filter(pk=message.pk).update(created_at=now - timedelta(days=days_old))
        MessageEmbedding.objects.create(
            item=message, conversation=conversation, tenant=tenant, space=space, embedding=vector
        )
        return message

    old_exact = add(web, [1.0, 0.0], 365)
    new_close = add(sms, [0.95, 0.31], 0)  # similarity ~0.95
    far = add(web, [0.6, 0.8], 0)  # similarity 0.6

    result = message_search(
        tenant=tenant,
        space=space,
        vector=[1.0, 0.0],
        filters=SearchFilters(),
        k=2,
        ranking=Ranking(channel="sms"),
        now=now,
    )
    assert [hit.message_id for hit in result.hits] == [new_close.pk, old_exact.pk]
    assert result.threshold == 0.7

    strict = message_search(
        tenant=tenant,
        space=space,
        vector=[1.0, 0.0],
        filters=SearchFilters(),
        k=3,
        ranking=Ranking(min_similarity=0.9),
        now=now,
    )
    assert {hit.message_id for hit in strict.hits} == {old_exact.pk, new_close.pk, far.pk}
    assert strict.threshold == pytest.approx(0.6)  # 0.9 -> 0.8 -> 0.7 -> 0.6: all three pass
    fixed = message_search(
        tenant=tenant,
        space=space,
        vector=[1.0, 0.0],
        filters=SearchFilters(),
        k=3,
        ranking=Ranking(min_similarity=0.9, adaptive=False),
        now=now,
    )
    assert len(fixed.hits) == 2
