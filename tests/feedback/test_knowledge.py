"""The knowledge base's services and the embedding pipeline: entries are versioned on every
change, embedded by the same worker as messages, re-embedded when their question changes, and an
approved learning item creates or updates the entry that answers its question."""

from __future__ import annotations

from typing import Any

import pytest

from clustering.services.moderation import Actor
from conversations.models import EmbeddingSpace, Tenant
from conversations.services.embedding import embedding_drain
from conversations.services.embedding_kinds import embedding_kinds
from convo.errors import Conflict, NotFound, ServiceError
from feedback.knowledge import (
    knowledge_entry_create,
    knowledge_entry_delete,
    knowledge_entry_update,
    knowledge_fields_clean,
    knowledge_lookup_count,
)
from feedback.models import (
    KnowledgeEmbedding,
    KnowledgeEntry,
    KnowledgeLookupDay,
    LearningItem,
    LearningStatus,
    LookupDecision,
)
from feedback.payloads import CorrectionIn, FeedbackIn
from feedback.selectors import feedback_stats
from feedback.services import correction_record, feedback_record, learning_item_approve, learning_item_reject
from tests.clustering.conftest import cluster_of
from tests.feedback.conftest import QUESTION, Exchange

pytestmark = pytest.mark.django_db

ALICE = Actor(label="user:alice")


def entry_of(tenant: Tenant, question: str = "How do I reset my password?", answer: str = "Use the link.") -> Any:
    return knowledge_entry_create(
        tenant=tenant, fields=knowledge_fields_clean(question=question, answer=answer), actor=ALICE
    )


def test_the_knowledge_kind_is_part_of_the_pipeline() -> None:
    assert [kind.name for kind in embedding_kinds()] == ["message", "conversation", "knowledge"]


def test_a_new_entry_is_version_one_pending_embedding(tenant: Tenant) -> None:
    entry = entry_of(tenant)
    assert (entry.version, entry.embedding_state, entry.source, entry.updated_by) == (
        1,
        "pending",
        "manual",
        "user:alice",
    )
    (version,) = entry.versions.all()
    assert (version.version, version.question, version.answer, version.change) == (
        1,
        entry.question,
        entry.answer,
        "created",
    )


def test_the_worker_embeds_entries_and_an_edited_question_again(tenant: Tenant) -> None:
    entry = entry_of(tenant)
    embedding_drain(seconds=30)
    entry.refresh_from_db()
    assert entry.embedding_state == "done"
    space = EmbeddingSpace.objects.get(state="active")
    first = KnowledgeEmbedding.objects.get(item=entry, space=space).embedding
    assert KnowledgeEmbedding.objects.get(item=entry).tenant_id == tenant.pk

    edited = knowledge_entry_update(entry=entry, actor=ALICE, question="How can I change my password?")
    assert (edited.version, edited.embedding_state) == (2, "pending")
    embedding_drain(seconds=30)
    edited.refresh_from_db()
    assert edited.embedding_state == "done"
    assert KnowledgeEmbedding.objects.filter(item=entry).count() == 1  # replaced, not added
    assert KnowledgeEmbedding.objects.get(item=entry).embedding != first


def test_an_answer_edit_keeps_history_and_the_vector(tenant: Tenant) -> None:
    entry = entry_of(tenant)
    embedding_drain(seconds=30)
    edited = knowledge_entry_update(
        entry=entry, actor=Actor(label="user:bob"), answer="Use the reset link.", tags=["Auth"]
    )
    assert (edited.version, edited.embedding_state, edited.tags) == (2, "done", ["auth"])
    history = list(entry.versions.order_by("version").values_list("version", "answer", "changed_by"))
    assert history == [(1, "Use the link.", "user:alice"), (2, "Use the reset link.", "user:bob")]


def test_an_update_that_changes_nothing_writes_no_version(tenant: Tenant) -> None:
    entry = entry_of(tenant)
    same = knowledge_entry_update(entry=entry, actor=ALICE, answer="  Use the link.  ")
    assert same.version == 1 and entry.versions.count() == 1


def test_an_update_of_an_entry_deleted_meanwhile_is_not_found(tenant: Tenant) -> None:
    # The view read the entry; a concurrent DELETE removed it before the update took its lock.
    entry = entry_of(tenant)
    knowledge_entry_delete(entry=entry)
    with pytest.raises(NotFound):
        knowledge_entry_update(entry=entry, actor=ALICE, answer="Too late.")


def test_fields_are_checked_at_the_limit_and_one_past_it(tenant: Tenant, settings: Any) -> None:
    settings.KNOWLEDGE_MAX_QUESTION_CHARS = 10
    settings.KNOWLEDGE_MAX_TAGS = 2
    assert knowledge_fields_clean(question="q" * 10, answer="a", tags=["x", "y"]).question == "q" * 10
    with pytest.raises(ServiceError) as caught:
        knowledge_fields_clean(question="q" * 11, answer=" ", tags=["x", "y", "z"])
    assert set(caught.value.fields) == {"question", "answer", "tags"}


def test_a_key_is_unique_per_tenant(tenant: Tenant, other_tenant: Tenant) -> None:
    fields = knowledge_fields_clean(question="q?", answer="a.")
    knowledge_entry_create(tenant=tenant, fields=fields, actor=ALICE, key="faq-1")
    knowledge_entry_create(tenant=other_tenant, fields=fields, actor=ALICE, key="faq-1")
    with pytest.raises(ServiceError) as caught:
        knowledge_entry_create(tenant=tenant, fields=fields, actor=ALICE, key="faq-1")
    assert "key" in caught.value.fields


def test_delete_removes_entry_history_and_vectors(tenant: Tenant) -> None:
    entry = entry_of(tenant)
    embedding_drain(seconds=30)
    knowledge_entry_delete(entry=entry)
    assert not KnowledgeEntry.objects.exists() and not KnowledgeEmbedding.objects.exists()


# --- learning items into the knowledge base -----------------------------------------------------


def correct(tenant: Tenant, mine: Exchange, text: str = "We open at 10 on Sundays.") -> LearningItem:
    correction = correction_record(
        tenant=tenant,
        payload=CorrectionIn(
            conversation_id=mine.conversation.pk, message_id=mine.answer.pk, corrected_text=text, corrected_by="owner"
        ),
    )
    return LearningItem.objects.get(correction=correction)


def test_approving_a_correction_creates_an_entry_and_applies_the_item(tenant: Tenant, mine: Exchange) -> None:
    item = learning_item_approve(item=correct(tenant, mine), actor=ALICE)
    assert item.status == LearningStatus.APPLIED and item.entry is not None
    entry = item.entry
    assert (entry.question, entry.answer, entry.source) == (QUESTION, "We open at 10 on Sundays.", "correction")
    assert entry.versions.get().learning_item_id == item.pk


def test_a_second_correction_of_the_same_question_updates_the_entry(tenant: Tenant, mine: Exchange) -> None:
    first = learning_item_approve(item=correct(tenant, mine), actor=ALICE)
    second = learning_item_approve(item=correct(tenant, mine, "We open at 11 on Sundays."), actor=ALICE)
    assert second.entry_id == first.entry_id
    entry = KnowledgeEntry.objects.get()
    assert (entry.answer, entry.version) == ("We open at 11 on Sundays.", 2)


def test_an_entry_deleted_after_it_was_found_makes_the_item_a_new_entry(
    tenant: Tenant, mine: Exchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = learning_item_approve(item=correct(tenant, mine), actor=ALICE)
    stale = KnowledgeEntry.objects.get(pk=first.entry_id)
    knowledge_entry_delete(entry=stale)
    # The look-up found the entry; a concurrent delete removed it before the update's lock.
    monkeypatch.setattr("feedback.knowledge._entry_for", lambda tenant, *, key, question: stale)

    second = learning_item_approve(item=correct(tenant, mine, "We open at 11 on Sundays."), actor=ALICE)

    assert second.status == LearningStatus.APPLIED
    entry = KnowledgeEntry.objects.get()
    assert (entry.pk, entry.answer, entry.version) == (second.entry_id, "We open at 11 on Sundays.", 1)


def test_an_edit_and_approve_uses_the_edited_question_and_answer(tenant: Tenant, mine: Exchange) -> None:
    item = learning_item_approve(
        item=correct(tenant, mine), actor=ALICE, answer="Sundays: 10 to 4.", question="Sunday opening hours?"
    )
    assert (item.entry.question, item.entry.answer) == ("Sunday opening hours?", "Sundays: 10 to 4.")
    assert item.approved_answer == "Sundays: 10 to 4."


def test_an_item_without_a_question_stays_approved(tenant: Tenant, mine: Exchange) -> None:
    feedback = feedback_record(
        tenant=tenant, payload=FeedbackIn(conversation_id=mine.conversation.pk, message_id=mine.question.pk, rating=1)
    )
    item = LearningItem.objects.get(feedback=feedback)
    assert item.question == ""  # nothing was asked before the first message
    approved = learning_item_approve(item=item, actor=ALICE, answer="Sorry about that.")
    assert approved.status == LearningStatus.APPROVED and approved.entry is None
    assert not KnowledgeEntry.objects.exists()


def test_rejected_items_make_no_entry_and_cannot_be_approved(tenant: Tenant, mine: Exchange) -> None:
    item = learning_item_reject(item=correct(tenant, mine), actor=ALICE, note="wrong")
    with pytest.raises(Conflict):
        learning_item_approve(item=item, actor=ALICE)
    assert not KnowledgeEntry.objects.exists()


def test_a_too_long_edited_question_is_refused_naming_the_field(tenant: Tenant, mine: Exchange, settings: Any) -> None:
    settings.KNOWLEDGE_MAX_QUESTION_CHARS = 5
    item = correct(tenant, mine)
    with pytest.raises(ServiceError) as caught:
        learning_item_approve(item=item, actor=ALICE, question="x" * 6)
    assert "question" in caught.value.fields
    learning_item_approve(item=item, actor=ALICE, question="x" * 5)
    assert KnowledgeEntry.objects.get().question == "x" * 5


def test_answered_cluster_items_update_one_entry_per_cluster(tenant: Tenant, inbound: Any) -> None:
    from clustering.services.moderation import cluster_answer

    (message,) = inbound(tenant, "where is my card")
    cluster = cluster_of(message)
    cluster_answer(cluster=cluster, answer="Cards take 7 days.", actor=ALICE)
    first = learning_item_approve(item=LearningItem.objects.get(cluster=cluster), actor=ALICE)
    cluster.refresh_from_db()
    cluster_answer(cluster=cluster, answer="Cards take 5 days.", actor=ALICE)
    second = learning_item_approve(
        item=LearningItem.objects.get(cluster=cluster, status=LearningStatus.PENDING), actor=ALICE
    )
    assert first.entry_id == second.entry_id
    entry = KnowledgeEntry.objects.get()
    assert (entry.key, entry.answer, entry.source) == (
        f"cluster:{cluster.pk}",
        "Cards take 5 days.",
        "answered_cluster",
    )


def test_lookup_counters_add_up_per_tenant_and_show_in_stats(tenant: Tenant, other_tenant: Tenant) -> None:
    for decision in ["answer", "answer", "suggest", "no_match"]:
        knowledge_lookup_count(tenant=tenant, decision=decision)
    knowledge_lookup_count(tenant=other_tenant, decision=LookupDecision.NO_MATCH)
    row = KnowledgeLookupDay.objects.get(tenant=tenant)
    assert (row.answered, row.suggested, row.unmatched) == (2, 1, 1)
    stats = feedback_stats(tenant=tenant)
    assert stats.lookups.hit_rate == 0.5
    assert feedback_stats(tenant=other_tenant).lookups.hit_rate == 0.0


def test_nul_characters_are_refused_naming_the_field() -> None:
    with pytest.raises(ServiceError) as caught:
        knowledge_fields_clean(question="why\x00", answer="because\x00", tags=["a\x00"])
    assert set(caught.value.fields) == {"question", "answer", "tags"}
