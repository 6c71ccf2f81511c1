"""Changing the embedding model: convo_embeddings_switch backfills a new space side by side (here
from 384 to 128 dimensions, both with the hashing embedder), resumes after an interruption,
keeps search on the complete old space until the swap, and the worker follows the active space."""

from __future__ import annotations

from collections.abc import Sequence
from io import StringIO

import pytest
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection

from conversations.embeddings.base import EmbeddingRejected
from conversations.embeddings.hashing import HashingEmbedder
from conversations.models import (
    ConversationEmbedding,
    EmbeddingCacheEntry,
    EmbeddingSpace,
    Message,
    MessageEmbedding,
)
from conversations.payloads import ConversationUpdateIn
from conversations.search import SearchFilters, message_neighbours
from conversations.services.conversations import conversation_update
from conversations.services.embedding import embedding_drain, embedding_process_batch
from conversations.services.embedding_spaces import (
    embedding_space_activate,
    embedding_space_active_embedder,
    embedding_spaces_forget,
)
from tests.factories import ConversationFactory, MessageFactory

pytestmark = pytest.mark.django_db

OLD, NEW = "hashing:v1@384", "hashing:v1@128"
TO_NEW = ("--backend=hashing", "--dimensions=128", "--batch-size=5")


@pytest.fixture(autouse=True)
def _fresh(settings):
    settings.EMBEDDING_BATCH_SIZE = 5
    cache.clear()
    embedding_spaces_forget()
    PickyEmbedder.calls_left = None
    yield
    embedding_spaces_forget()


class PickyEmbedder:
    """Hashing vectors, but refuses any text containing REFUSE, as a provider refuses an
    over-long input; ``calls_left`` simulates a Ctrl-C after that many calls."""

    calls_left: int | None = None

    def __init__(self, *, model: str, dimensions: int) -> None:
        self.model_id = f"test:{model}"
        self.dimensions = dimensions
        self._inner = HashingEmbedder(dimensions=dimensions)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if PickyEmbedder.calls_left is not None:
            if PickyEmbedder.calls_left == 0:
                raise KeyboardInterrupt
            PickyEmbedder.calls_left -= 1
        if any("REFUSE" in text for text in texts):
            raise EmbeddingRejected("input refused")
        return self._inner.embed(texts)


def switch(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("convo_embeddings_switch", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def vectors(model: type[MessageEmbedding] | type[ConversationEmbedding], model_id: str) -> dict:
    return {e.item_id: list(e.embedding) for e in model.objects.filter(space__model_id=model_id)}


def hnsw_index(name: str) -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [name])
        row = cursor.fetchone()
    return row[0] if row else None


@pytest.fixture
def corpus(tenant):
    """12 messages and a summarised conversation, embedded by the worker in the settings' space."""
    conversation = ConversationFactory(tenant=tenant, summary="billing question about invoices")
    ConversationFactory(tenant=tenant)  # nothing to embed: skipped in every space
    messages = [MessageFactory(conversation=conversation, text=f"how do I pay invoice {i}") for i in range(12)]
    embedding_drain(seconds=30)
    assert set(Message.objects.values_list("embedding_state", flat=True)) == {"done"}
    return conversation, messages


@pytest.mark.django_db(transaction=True)  # the real path: autocommit, indexes built CONCURRENTLY
def test_switch_to_another_dimension_backfills_then_activates(corpus):
    conversation, messages = corpus
    old = EmbeddingSpace.objects.get(model_id=OLD)
    assert old.state == "active" and old.config["DIMENSIONS"] == 384  # the settings built the first space

    out, err = switch(*TO_NEW)

    new, old = EmbeddingSpace.objects.get(model_id=NEW), EmbeddingSpace.objects.get(model_id=OLD)
    assert (new.state, old.state) == ("active", "retired") and new.activated_at is not None
    assert new.config == {
        "BACKEND": "conversations.embeddings.hashing.HashingEmbedder",
        "MODEL": "v1",
        "DIMENSIONS": 128,
        "OPTIONS": {},
    }
    made = vectors(MessageEmbedding, NEW)
    assert set(made) == {m.pk for m in messages}
    # The backfill copies each message's conversation onto its vector, as the worker does.
    assert set(MessageEmbedding.objects.filter(space=new).values_list("conversation_id", flat=True)) == {
        conversation.pk
    }
    expected = HashingEmbedder(dimensions=128).embed([messages[3].text])[0]
    assert made[messages[3].pk] == pytest.approx(expected, abs=1e-6)
    assert set(vectors(ConversationEmbedding, NEW)) == {conversation.pk}
    assert len(vectors(MessageEmbedding, OLD)) == 12, "the old vectors stay, for a rollback"
    for prefix in ("msg", "conv"):
        definition = hnsw_index(f"{prefix}_hnsw_space_{new.pk}")
        assert definition and "vector(128)" in definition and f"WHERE (space_id = {new.pk})" in definition
    assert set(Message.objects.values_list("embedding_state", flat=True)) == {"done"}
    assert "backfill messages: 12/12 100%" in err and "search now uses hashing:v1@128" in out

    space, embedder = embedding_space_active_embedder()
    assert (space.pk, embedder.model_id, embedder.dimensions) == (new.pk, NEW, 128)


def test_an_interrupted_switch_keeps_search_on_the_old_space_and_resumes(corpus, tenant):
    conversation, messages = corpus
    with pytest.raises(CommandError) as stopped:
        switch(*TO_NEW, "--max-pages=1")
    assert stopped.value.returncode == 3

    new = EmbeddingSpace.objects.get(model_id=NEW)
    assert new.state == "building" and len(vectors(MessageEmbedding, NEW)) == 5
    # Meanwhile items keep arriving: the worker embeds them for search (the active space) and
    # for the switch (the building space).
    arrived = [MessageFactory(conversation=conversation, text=f"refund request {i}") for i in range(3)]
    embedding_drain(seconds=30)
    assert {m.pk for m in [*messages, *arrived]} <= set(vectors(MessageEmbedding, OLD))
    assert {m.pk for m in arrived} <= set(vectors(MessageEmbedding, NEW))

    space, embedder = embedding_space_active_embedder()
    assert space.model_id == OLD
    query = embedder.embed([arrived[1].text])[0]
    found, _, _ = message_neighbours(tenant=tenant, space=space, vector=query, filters=SearchFilters(), limit=3)
    assert found[0][0] == arrived[1].pk and found[0][1] == pytest.approx(1.0)

    switch(*TO_NEW)

    assert EmbeddingSpace.objects.get(model_id=NEW).state == "active"
    assert set(vectors(MessageEmbedding, NEW)) == {m.pk for m in [*messages, *arrived]}
    space, embedder = embedding_space_active_embedder()
    query = embedder.embed([arrived[1].text])[0]
    found, _, _ = message_neighbours(tenant=tenant, space=space, vector=query, filters=SearchFilters(), limit=3)
    assert space.model_id == NEW and found[0][0] == arrived[1].pk


def test_ctrl_c_leaves_a_resumable_switch(corpus):
    space = EmbeddingSpace.objects.create(
        model_id="test:picky",
        dimensions=16,
        state="retired",
        config={"BACKEND": "tests.conversations.test_model_switch.PickyEmbedder", "MODEL": "picky", "DIMENSIONS": 16},
    )
    PickyEmbedder.calls_left = 3  # the probe, two pages, then Ctrl-C
    with pytest.raises(CommandError) as interrupted:
        switch("--space=test:picky", "--batch-size=5")
    assert interrupted.value.returncode == 130
    space.refresh_from_db()
    assert space.state == "building" and MessageEmbedding.objects.filter(space=space).count() == 10

    PickyEmbedder.calls_left = None
    switch("--space=test:picky", "--batch-size=5")
    space.refresh_from_db()
    assert space.state == "active" and MessageEmbedding.objects.filter(space=space).count() == 12


def test_dry_run_changes_nothing(corpus):
    before = (
        list(EmbeddingSpace.objects.values_list("model_id", "state")),
        MessageEmbedding.objects.count(),
        EmbeddingCacheEntry.objects.count(),
    )
    out, _ = switch(*TO_NEW, "--dry-run")
    after = (
        list(EmbeddingSpace.objects.values_list("model_id", "state")),
        MessageEmbedding.objects.count(),
        EmbeddingCacheEntry.objects.count(),
    )
    assert before == after
    assert "would create the space of hashing:v1@128" in out and "messages to embed: 12" in out


def test_after_the_switch_the_worker_follows_the_active_space_not_the_settings(corpus, settings):
    conversation, _ = corpus
    switch(*TO_NEW)
    assert settings.EMBEDDINGS["DIMENSIONS"] == 384  # the settings still name the old model

    late = MessageFactory(conversation=conversation, text="a message after the switch")
    embedding_drain(seconds=30)

    late.refresh_from_db()
    assert late.embedding_state == "done"
    vector = MessageEmbedding.objects.get(item=late).embedding  # one vector, in the new space only
    assert len(vector) == 128
    assert EmbeddingSpace.objects.count() == 2


def test_a_batch_embedded_for_the_old_space_during_the_swap_goes_back_to_the_queue(corpus, tenant):
    """The worker embedded a batch with the old model; the switch activated the new space before
    the batch finished. The batch must not mark its items done: they have no vector where search
    now looks. They are handed back and embedded with the new model."""
    conversation, _ = corpus
    switch(*TO_NEW, "--no-activate")
    new = EmbeddingSpace.objects.get(model_id=NEW)
    assert new.state == "building"
    old = EmbeddingSpace.objects.get(model_id=OLD)

    class SwapMidBatch(HashingEmbedder):
        def embed(self, texts: Sequence[str]) -> list[list[float]]:
            embedding_space_activate(space=new)
            return super().embed(texts)

    late = [MessageFactory(conversation=conversation, text=f"late {i}") for i in range(3)]
    outcome = embedding_process_batch(kind="message", embedder=SwapMidBatch(dimensions=384), space=old, limit=10)
    assert (outcome.done, outcome.released) == (0, 3)
    assert set(Message.objects.filter(pk__in=[m.pk for m in late]).values_list("embedding_state", flat=True)) == {
        "pending"
    }

    embedding_drain(seconds=30)
    assert {m.pk for m in late} <= set(vectors(MessageEmbedding, NEW))
    assert set(Message.objects.values_list("embedding_state", flat=True)) == {"done"}


def test_a_switch_to_another_model_under_way_is_refused_unless_abandoned(corpus):
    with pytest.raises(CommandError):
        switch(*TO_NEW, "--max-pages=1")
    with pytest.raises(CommandError, match="under way"):
        switch("--backend=hashing", "--dimensions=64")
    switch("--backend=hashing", "--dimensions=64", "--abandon-other")
    states = dict(EmbeddingSpace.objects.values_list("model_id", "state"))
    assert states == {OLD: "retired", NEW: "retired", "hashing:v1@64": "active"}


def test_rollback_reactivates_the_retired_space_with_what_changed_meanwhile(corpus, tenant):
    conversation, messages = corpus
    switch(*TO_NEW)
    old = EmbeddingSpace.objects.get(model_id=OLD)
    assert hnsw_index(f"msg_hnsw_space_{old.pk}") is not None
    out, _ = switch(f"--space={NEW}", "--retire-old")  # later, once sure: free the old indexes
    assert "already the active space" in out
    assert hnsw_index(f"msg_hnsw_space_{old.pk}") is None and hnsw_index(f"conv_hnsw_space_{old.pk}") is None

    late = MessageFactory(conversation=conversation, text="arrived under the new model")
    conversation_update(conversation=conversation, changes=ConversationUpdateIn(summary="shipping question"))
    embedding_drain(seconds=30)

    switch(f"--space={OLD}", "--batch-size=5")

    old.refresh_from_db()
    assert old.state == "active" and EmbeddingSpace.objects.get(model_id=NEW).state == "retired"
    assert set(vectors(MessageEmbedding, OLD)) == {m.pk for m in [*messages, late]}
    summary = ConversationEmbedding.objects.get(item=conversation, space=old).embedding
    assert list(summary) == pytest.approx(HashingEmbedder(dimensions=384).embed([conversation.summary])[0], abs=1e-6)
    assert hnsw_index(f"msg_hnsw_space_{old.pk}") is not None


def test_texts_the_new_model_refuses_block_the_switch_until_accepted(corpus):
    conversation, _ = corpus
    refused = MessageFactory(conversation=conversation, text="REFUSE this one")
    embedding_drain(seconds=30)
    space = EmbeddingSpace.objects.create(
        model_id="test:picky",
        dimensions=16,
        state="retired",
        config={"BACKEND": "tests.conversations.test_model_switch.PickyEmbedder", "MODEL": "picky", "DIMENSIONS": 16},
    )

    with pytest.raises(CommandError, match="refused 1 texts"):
        switch("--space=test:picky")
    space.refresh_from_db()
    assert space.state == "building"

    switch("--space=test:picky", "--max-rejected=1")
    space.refresh_from_db()
    refused.refresh_from_db()
    assert space.state == "active"
    # Handed to the worker, which embeds it with the now active model: refused for good.
    assert refused.embedding_state == "failed" and "input refused" in refused.embedding_error


def test_an_unreachable_provider_fails_before_anything_is_written(corpus):
    with pytest.raises(CommandError, match="does not answer"):
        switch(
            "--backend=ollama",
            "--model=nothing-here",
            "--dimensions=8",
            "--url=http://127.0.0.1:9",
            "--max-retries=0",
            "--timeout-seconds=1",
        )
    assert not EmbeddingSpace.objects.filter(model_id="ollama:nothing-here").exists()


def test_a_failing_building_space_never_fails_an_item(tenant, caplog):
    """The worker embeds new items for a switch under way too, but only as a favour to it: when
    the new model cannot be built or answer here, the item is still done in the active space."""
    embedding_space_active_embedder()  # the settings' space, active
    EmbeddingSpace.objects.create(
        model_id="test:broken",
        dimensions=16,
        state="building",
        config={"BACKEND": "no.such.Backend", "MODEL": "broken", "DIMENSIONS": 16},
    )
    message = MessageFactory(conversation=ConversationFactory(tenant=tenant))
    embedding_drain(seconds=30)
    message.refresh_from_db()
    assert message.embedding_state == "done"
    assert MessageEmbedding.objects.filter(item=message).values_list("space__model_id", flat=True).get() == OLD
    assert "cannot build the embedder of test:broken" in caplog.text


def test_a_space_stored_without_config_is_adopted_by_the_matching_settings():
    """Spaces made before configs were stored: the settings' model adopts its own space."""
    space = EmbeddingSpace.objects.create(model_id=OLD, dimensions=384, state="active")
    active, embedder = embedding_space_active_embedder()
    assert (active.pk, embedder.model_id) == (space.pk, OLD)
    space.refresh_from_db()
    assert space.config["BACKEND"] == "conversations.embeddings.hashing.HashingEmbedder"

    EmbeddingSpace.objects.filter(pk=space.pk).update(state="retired")
    EmbeddingSpace.objects.create(model_id="test:unknown", dimensions=8, state="active")
    embedding_spaces_forget()
    with pytest.raises(ImproperlyConfigured, match="no stored config"):
        embedding_space_active_embedder()
