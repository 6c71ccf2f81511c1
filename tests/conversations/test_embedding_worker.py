"""The embedding worker: batches, cache, poison items, outages, leases, and concurrent claims."""

from __future__ import annotations

import hashlib
import math
import threading
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from conversations.embeddings.base import EmbeddingInvalid, EmbeddingUnavailable
from conversations.models import (
    Conversation,
    ConversationEmbedding,
    EmbeddingCacheEntry,
    EmbeddingCacheStats,
    EmbeddingSpace,
    Message,
    MessageEmbedding,
)
from conversations.payloads import ConversationUpdateIn
from conversations.services.conversations import conversation_update
from conversations.services.embedding import _claim, embedding_drain, embedding_process_batch, embedding_reconcile
from conversations.services.embedding_spaces import embedding_space_for, embedding_spaces_forget
from tests.factories import ConversationFactory, MessageFactory

pytestmark = pytest.mark.django_db

DIMS = 8


class CountingEmbedder:
    """A protocol-conforming embedder that counts every text it is asked for. Texts containing
    "POISON" make it raise EmbeddingInvalid for the whole call (as a provider validator would on
    a NaN vector); ``down`` makes every call EmbeddingUnavailable."""

    model_id = "test:counting"
    dimensions = DIMS

    def __init__(self) -> None:
        self.asked: Counter[str] = Counter()
        self.calls = 0
        self.down = False

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        if self.down:
            raise EmbeddingUnavailable("provider down")
        if any("POISON" in text for text in texts):
            raise EmbeddingInvalid("vector 0 contains NaN")
        self.asked.update(texts)
        vectors = []
        for text in texts:
            digest = hashlib.sha256(text.encode()).digest()
            vector = [b - 127.5 for b in digest[:DIMS]]
            norm = math.sqrt(sum(x * x for x in vector))
            vectors.append([x / norm for x in vector])
        return vectors


@pytest.fixture
def embedder(settings):
    settings.EMBEDDING_BATCH_SIZE = 4
    settings.EMBEDDING_MAX_ATTEMPTS = 3
    cache.clear()
    embedding_spaces_forget()
    yield CountingEmbedder()
    embedding_spaces_forget()


def test_drain_embeds_pending_messages_and_conversations(embedder, tenant):
    conversation = ConversationFactory(tenant=tenant, summary="a summary")
    empty = ConversationFactory(tenant=tenant)
    messages = [MessageFactory(conversation=conversation, text=f"text {i}") for i in range(10)]

    assert embedding_drain(embedder=embedder, seconds=30) == 12

    space = EmbeddingSpace.objects.get(model_id="test:counting")
    assert space.state == "active" and space.dimensions == DIMS
    assert set(Message.objects.values_list("embedding_state", flat=True)) == {"done"}
    assert MessageEmbedding.objects.filter(space=space).count() == 10
    assert len(MessageEmbedding.objects.get(item=messages[0]).embedding) == DIMS
    # Each vector carries its message's conversation: per-user search reads vectors through it.
    assert set(MessageEmbedding.objects.values_list("conversation_id", flat=True)) == {conversation.pk}
    conversation.refresh_from_db()
    empty.refresh_from_db()
    assert conversation.embedding_state == "done"
    assert ConversationEmbedding.objects.filter(item=conversation, tenant=tenant).exists()
    assert empty.embedding_state == "skipped"
    assert embedder.calls == 3 + 1  # 10 messages in batches of 4; one conversation (the empty one is not sent)


def test_identical_texts_are_embedded_once_per_model(embedder, tenant):
    conversation = ConversationFactory(tenant=tenant)
    for text in ["How much?", "how much?", "How   much?", "  How much?\n", "How much?"]:
        MessageFactory(conversation=conversation, text=text)
    embedding_drain(embedder=embedder, seconds=30)
    assert embedder.asked == Counter({"How much?": 1, "how much?": 1})  # whitespace normalised, case kept

    cache.clear()  # the hot layer is gone (a restart): the durable table still answers
    MessageFactory(conversation=conversation, text="How much?")
    embedding_drain(embedder=embedder, seconds=30)
    assert embedder.asked == Counter({"How much?": 1, "how much?": 1})
    assert EmbeddingCacheEntry.objects.filter(model_id="test:counting").count() == 2

    MessageFactory(conversation=conversation, text="How much?")
    embedding_drain(embedder=embedder, seconds=30)
    stats = EmbeddingCacheStats.objects.get(model_id="test:counting")
    # first drain: 2 misses, then its second batch hits the hot layer; then 1 durable hit, 1 hot hit
    assert (stats.misses, stats.durable_hits, stats.hot_hits) == (2, 1, 2)
    assert set(Message.objects.values_list("embedding_state", flat=True)) == {"done"}


def test_the_model_runs_a_batch_ahead_and_never_embeds_a_text_twice(embedder, tenant):
    """The drain embeds batch n + 1 in the model thread while it stores batch n, so the third
    batch is looked up before the second is cached: the texts they share come from the second
    batch's fresh vectors, not from the model again."""
    threads: set[str] = set()
    embed = embedder.embed

    def recording(texts):
        threads.add(threading.current_thread().name)
        return embed(texts)

    embedder.embed = recording
    conversation = ConversationFactory(tenant=tenant)
    texts = [f"question {i}" for i in (0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7)]  # batches of 4
    for text in texts:
        MessageFactory(conversation=conversation, text=text)

    assert embedding_drain(embedder=embedder, seconds=30) == 13  # 12 messages, 1 (blank) conversation

    assert embedder.asked == Counter(set(texts))
    assert {name.split("_")[0] for name in threads} == {"embedding-model"}
    assert set(Message.objects.values_list("embedding_state", flat=True)) == {"done"}
    stats = EmbeddingCacheStats.objects.get(model_id="test:counting")
    assert (stats.misses, stats.hot_hits) == (8, 4)


def pending_messages(tenant, count):
    """``count`` pending messages in one conversation that has nothing to embed itself, so the
    drain's batches are all messages."""
    conversation = ConversationFactory(tenant=tenant, embedding_state="skipped")
    return [MessageFactory(conversation=conversation, text=f"text {i}") for i in range(count)]


def test_a_failing_store_ends_the_drain_and_hands_back_the_batch_claimed_ahead(embedder, tenant, monkeypatch):
    import conversations.services.embedding as worker

    def broken(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(worker, "_upsert_vectors", broken)
    pending_messages(tenant, 12)
    Message.objects.update(embedding_error="an earlier attempt's error")

    with pytest.raises(RuntimeError, match="went away"):
        embedding_drain(embedder=embedder, seconds=30)

    # The batch whose store failed stays claimed, for the reconciler; the one claimed ahead of it
    # is back in the queue with its attempt given back.
    states = Counter(Message.objects.values_list("embedding_state", "embedding_attempts"))
    assert states == Counter({("processing", 1): 4, ("pending", 0): 8})
    # Nothing was tried on the batch handed back: the last real error stays.
    assert set(Message.objects.values_list("embedding_error", flat=True)) == {"an earlier attempt's error"}

    monkeypatch.undo()
    Message.objects.filter(embedding_state="processing").update(embedding_state="pending")  # as the reconciler would
    assert embedding_drain(embedder=embedder, seconds=30) == 12
    assert set(Message.objects.values_list("embedding_state", flat=True)) == {"done"}
    # Whatever the model made before the failure was cached: no text was embedded twice.
    assert max(embedder.asked.values()) == 1 and len(embedder.asked) == 12


def test_a_failing_claim_still_stores_the_batch_the_model_embedded(embedder, tenant, monkeypatch):
    import conversations.services.embedding as worker

    real_claim = worker._claim
    calls = {"n": 0}

    def claim_then_fail(**kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("the cache went away")
        return real_claim(**kwargs)

    monkeypatch.setattr(worker, "_claim", claim_then_fail)
    pending_messages(tenant, 8)

    with pytest.raises(RuntimeError, match="cache went away"):
        embedding_drain(embedder=embedder, seconds=30)

    assert Counter(Message.objects.values_list("embedding_state", flat=True)) == {"done": 4, "pending": 4}
    assert EmbeddingCacheEntry.objects.filter(model_id="test:counting").count() == 4


def test_a_poison_item_fails_alone(embedder, tenant):
    conversation = ConversationFactory(tenant=tenant)
    good = [MessageFactory(conversation=conversation, text=f"fine {i}") for i in range(3)]
    bad = MessageFactory(conversation=conversation, text="POISON pill")
    blank = MessageFactory(conversation=conversation, text="   ")

    embedding_drain(embedder=embedder, seconds=30)

    for message in good:
        message.refresh_from_db()
        assert message.embedding_state == "done"
    bad.refresh_from_db()
    blank.refresh_from_db()
    assert bad.embedding_state == "failed" and "NaN" in bad.embedding_error
    assert blank.embedding_state == "failed" and blank.embedding_error == "the text is empty"
    assert not MessageEmbedding.objects.filter(item__in=[bad, blank]).exists()


def test_a_vector_of_the_wrong_size_fails_its_item(embedder, tenant):
    space = embedding_space_for(embedder=embedder)
    message = MessageFactory(conversation=ConversationFactory(tenant=tenant))

    class Shrunk(CountingEmbedder):
        def embed(self, texts: Sequence[str]) -> list[list[float]]:
            return [vector[:3] for vector in super().embed(texts)]

    embedding_process_batch(kind="message", embedder=Shrunk(), space=space, limit=10)
    message.refresh_from_db()
    assert message.embedding_state == "failed" and "3 dimensions" in message.embedding_error


def test_an_outage_hands_items_back_until_their_attempts_run_out(embedder, tenant):
    message = MessageFactory(conversation=ConversationFactory(tenant=tenant))
    embedder.down = True
    space = embedding_space_for(embedder=embedder)
    for attempt in (1, 2):
        embedding_process_batch(kind="message", embedder=embedder, space=space, limit=10)
        message.refresh_from_db()
        assert (message.embedding_state, message.embedding_attempts) == ("pending", attempt)
        assert "provider down" in message.embedding_error
    embedding_process_batch(kind="message", embedder=embedder, space=space, limit=10)
    message.refresh_from_db()
    assert (message.embedding_state, message.embedding_attempts) == ("failed", 3)

    embedder.down = False
    other = MessageFactory(conversation=message.conversation)
    embedding_drain(embedder=embedder, seconds=30)
    other.refresh_from_db()
    assert other.embedding_state == "done"


def test_reconcile_hands_back_expired_claims(embedder, tenant, settings):
    settings.EMBEDDING_LEASE_SECONDS = 60
    conversation = ConversationFactory(tenant=tenant)
    stale, spent, fresh = (MessageFactory(conversation=conversation) for _ in range(3))
    long_ago = timezone.now() - timedelta(minutes=5)
    Message.objects.filter(pk=stale.pk).update(
        embedding_state="processing", embedding_claimed_at=long_ago, embedding_attempts=1
    )
    Message.objects.filter(pk=spent.pk).update(
        embedding_state="processing", embedding_claimed_at=long_ago, embedding_attempts=3
    )
    Message.objects.filter(pk=fresh.pk).update(embedding_state="processing", embedding_claimed_at=timezone.now())

    assert embedding_reconcile() == 2
    states = dict(Message.objects.values_list("pk", "embedding_state"))
    assert (states[stale.pk], states[spent.pk], states[fresh.pk]) == ("pending", "failed", "processing")


def test_a_text_change_during_processing_is_not_lost(embedder, tenant):
    conversation = ConversationFactory(tenant=tenant, summary="old words")
    space = embedding_space_for(embedder=embedder)
    claimed = _claim(kind="conversation", limit=10)
    assert [item.id for item, _ in claimed] == [conversation.pk]

    conversation_update(conversation=conversation, changes=ConversationUpdateIn(summary="new words"))
    # The in-flight batch finishes after the change: it must not mark the row done.
    from conversations.services.embedding import _finish_done, _store_vectors

    _store_vectors("conversation", space, [(claimed[0][0], claimed[0][1], [1.0] + [0.0] * (DIMS - 1))])
    assert _finish_done("conversation", [(claimed[0][0], claimed[0][1], [])]) == 0
    conversation.refresh_from_db()
    assert conversation.embedding_state == "pending"

    embedding_drain(embedder=embedder, seconds=30)
    conversation.refresh_from_db()
    assert conversation.embedding_state == "done"
    stored = ConversationEmbedding.objects.get(item=conversation, space=space).embedding
    assert list(stored) == pytest.approx(embedder.embed(["new words"])[0], abs=1e-6)


def test_each_space_gets_a_partial_hnsw_index_that_search_can_use(embedder, tenant):
    space = embedding_space_for(embedder=embedder)
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [f"msg_hnsw_space_{space.pk}"])
        definition = cursor.fetchone()[0]
    assert "USING hnsw" in definition and f"vector({DIMS})" in definition and "vector_cosine_ops" in definition
    assert f"WHERE (space_id = {space.pk})" in definition
    assert "m='16'" in definition and "ef_construction='64'" in definition


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_never_share_rows(tenant):
    conversation = ConversationFactory(tenant=tenant)
    for _ in range(40):
        MessageFactory(conversation=conversation)
    taken: list[list[object]] = []
    barrier = threading.Barrier(4)

    def claim() -> None:
        try:
            barrier.wait()
            taken.append([item.id for item, _ in _claim(kind="message", limit=15)])
        finally:
            connection.close()

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [row for batch in taken for row in batch]
    assert len(everything) == len(set(everything)) == 40
    assert Conversation.objects.count() == 1


def _synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_cache_entries_commit_without_waiting_for_the_flush_only_in_their_own_transaction(embedder, monkeypatch):
    """Outside any transaction the cache write is its own, committed asynchronously (an entry can
    be made again); the setting ends with it. Inside a caller's transaction it is never changed:
    that would weaken the caller's own commit."""
    from django.db import transaction

    import conversations.services.embedding_cache as cache_module

    seen: list[str] = []
    insert = cache_module._entries_insert

    def watched(*args, **kwargs):
        seen.append(_synchronous_commit())
        return insert(*args, **kwargs)

    monkeypatch.setattr(cache_module, "_entries_insert", watched)

    cache_module.embed_texts_cached(embedder=embedder, texts=["alone"])
    assert seen == ["off"] and _synchronous_commit() == "on"

    with transaction.atomic():
        cache_module.embed_texts_cached(embedder=embedder, texts=["inside"])
        assert seen == ["off", "on"] and _synchronous_commit() == "on"
    assert EmbeddingCacheEntry.objects.filter(model_id="test:counting").count() == 2
