"""Learning items are made in the same transaction as their source: every owner correction, low
ratings (a setting) and thumbs down, and every answered cluster; review moves a pending item once."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import IntegrityError

from clustering.services.moderation import Actor, cluster_answer
from conversations.models import Tenant
from convo.errors import Conflict, NotFound, ServiceError
from feedback.models import (
    Feedback,
    LearningItem,
    LearningSource,
    LearningStatus,
    OwnerCorrection,
)
from feedback.payloads import CorrectionIn, FeedbackIn
from feedback.services import (
    SUPERSEDED_NOTE,
    correction_record,
    feedback_record,
    learning_item_approve,
    learning_item_reject,
)
from tests.clustering.conftest import Inbound, cluster_of
from tests.feedback.conftest import ANSWER, QUESTION, Exchange

pytestmark = pytest.mark.django_db

REVIEWER = Actor(label="user:reviewer")


def rate(tenant: Tenant, exchange: Exchange, **verdict: Any) -> Feedback:
    payload = FeedbackIn(conversation_id=exchange.conversation.pk, message_id=exchange.answer.pk, **verdict)
    return feedback_record(tenant=tenant, payload=payload)


def correct(tenant: Tenant, exchange: Exchange, text: str = "We open 10 to 16 on Sundays.") -> OwnerCorrection:
    payload = CorrectionIn(
        conversation_id=exchange.conversation.pk,
        message_id=exchange.answer.pk,
        corrected_text=text,
        reason="hours changed",
        corrected_by="owner@example.com",
    )
    return correction_record(tenant=tenant, payload=payload)


def test_a_correction_queues_an_item_with_question_original_and_proposed(tenant: Tenant, mine: Exchange) -> None:
    correction = correct(tenant, mine)

    item = LearningItem.objects.get(correction=correction)
    assert item.tenant == tenant
    assert item.source == LearningSource.CORRECTION
    assert item.status == LearningStatus.PENDING
    assert item.question == QUESTION  # the user's message before the corrected response
    assert item.original_answer == ANSWER  # taken from the message when not given
    assert item.proposed_answer == "We open 10 to 16 on Sundays."


@pytest.mark.parametrize(
    ("verdict", "queued"),
    [
        ({"rating": 1}, True),
        ({"rating": 2}, True),  # at the default threshold
        ({"rating": 3}, False),
        ({"rating": 5}, False),
        ({"thumbs": "down"}, True),
        ({"thumbs": "up"}, False),
    ],
)
def test_low_ratings_and_thumbs_down_queue_an_item(
    tenant: Tenant, mine: Exchange, verdict: dict[str, Any], queued: bool
) -> None:
    feedback = rate(tenant, mine, **verdict)

    items = LearningItem.objects.filter(feedback=feedback)
    assert items.exists() is queued
    if queued:
        item = items.get()
        assert (item.source, item.question, item.original_answer, item.proposed_answer) == (
            LearningSource.LOW_RATING,
            QUESTION,
            ANSWER,
            "",
        )


def test_the_low_rating_threshold_is_a_setting(tenant: Tenant, mine: Exchange, settings: Any) -> None:
    settings.FEEDBACK_LOW_RATING_THRESHOLD = 3
    assert LearningItem.objects.filter(feedback=rate(tenant, mine, rating=3)).exists()
    assert not LearningItem.objects.filter(feedback=rate(tenant, mine, rating=4)).exists()


def test_the_item_is_in_the_same_transaction_as_its_source(
    tenant: Tenant, mine: Exchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the learning item cannot be stored, neither is the correction or the feedback."""

    def broken(*args: Any, **kwargs: Any) -> None:
        raise IntegrityError("no learning item")

    monkeypatch.setattr(LearningItem.objects, "create", broken)
    with pytest.raises(IntegrityError):
        correct(tenant, mine)
    with pytest.raises(IntegrityError):
        rate(tenant, mine, rating=1)
    assert not OwnerCorrection.objects.exists()
    assert not Feedback.objects.exists()


def test_an_answered_cluster_queues_an_item_and_a_new_answer_supersedes_it(tenant: Tenant, inbound: Inbound) -> None:
    first, _ = inbound(tenant, "is the shop open on sunday?", "is the shop open on sunday??")
    cluster = cluster_answer(cluster=cluster_of(first), answer="Yes, 10 to 16.", actor=REVIEWER)

    item = LearningItem.objects.get(cluster=cluster)
    assert item.source == LearningSource.ANSWERED_CLUSTER
    assert item.question == cluster.representative_text
    assert item.proposed_answer == "Yes, 10 to 16."
    assert item.cluster_answer_version == 1

    cluster_answer(cluster=cluster, answer="Yes, 11 to 15.", actor=REVIEWER)
    old, new = LearningItem.objects.filter(cluster=cluster).order_by("cluster_answer_version")
    assert (old.status, old.review_note) == (LearningStatus.REJECTED, SUPERSEDED_NOTE)
    assert (new.status, new.proposed_answer, new.cluster_answer_version) == (
        LearningStatus.PENDING,
        "Yes, 11 to 15.",
        2,
    )


def test_a_refused_cluster_answer_queues_nothing(tenant: Tenant, inbound: Inbound) -> None:
    first, _ = inbound(tenant, "is the shop open on sunday?", "is the shop open on sunday??")
    with pytest.raises(ServiceError):
        cluster_answer(cluster=cluster_of(first), answer="   ", actor=REVIEWER)
    assert not LearningItem.objects.exists()


def test_approve_records_who_and_when_and_a_second_review_conflicts(tenant: Tenant, mine: Exchange) -> None:
    item = LearningItem.objects.get(correction=correct(tenant, mine))

    approved = learning_item_approve(item=item, actor=REVIEWER, note="good")

    assert approved.status == LearningStatus.APPLIED  # approved, and taken into the knowledge base
    assert approved.approved_answer == "We open 10 to 16 on Sundays."
    assert (approved.reviewed_by, approved.review_note) == ("user:reviewer", "good")
    assert approved.reviewed_at is not None
    with pytest.raises(Conflict):
        learning_item_approve(item=item, actor=REVIEWER)
    with pytest.raises(Conflict):
        learning_item_reject(item=item, actor=REVIEWER)


def test_approve_with_an_edit_keeps_the_proposal(tenant: Tenant, mine: Exchange) -> None:
    item = LearningItem.objects.get(correction=correct(tenant, mine))
    approved = learning_item_approve(item=item, actor=REVIEWER, answer="  Sundays: 10 to 16.  ")
    assert (approved.approved_answer, approved.proposed_answer) == (
        "Sundays: 10 to 16.",
        "We open 10 to 16 on Sundays.",
    )


def test_a_low_rating_item_needs_an_answer_to_be_approved(tenant: Tenant, mine: Exchange) -> None:
    item = LearningItem.objects.get(feedback=rate(tenant, mine, rating=1))
    with pytest.raises(ServiceError) as refused:
        learning_item_approve(item=item, actor=REVIEWER)
    assert refused.value.fields is not None and "answer" in refused.value.fields
    assert learning_item_approve(item=item, actor=REVIEWER, answer="Open 10-16.").status == LearningStatus.APPLIED


def test_reject_then_approve_conflicts(tenant: Tenant, mine: Exchange) -> None:
    item = LearningItem.objects.get(correction=correct(tenant, mine))
    assert learning_item_reject(item=item, actor=REVIEWER, note="wrong").status == LearningStatus.REJECTED
    with pytest.raises(Conflict):
        learning_item_approve(item=item, actor=REVIEWER)


def test_another_tenants_conversation_is_not_found(tenant: Tenant, theirs: Exchange) -> None:
    with pytest.raises(NotFound) as missing:
        correct(tenant, theirs)
    assert missing.value.fields == {"conversation_id": ["No such conversation."]}


def test_the_database_refuses_values_out_of_range(tenant: Tenant, mine: Exchange) -> None:
    with pytest.raises(IntegrityError):
        Feedback.objects.create(tenant=tenant, conversation=mine.conversation, kind="rating", value=6)
