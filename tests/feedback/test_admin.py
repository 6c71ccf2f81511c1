"""The admin: records are read-only; the review queue shows an escaped side-by-side diff and
approves (and so applies) or rejects in bulk through the services."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from conversations.models import Tenant
from feedback.models import Feedback, LearningItem, LearningStatus, OwnerCorrection
from feedback.payloads import CorrectionIn, FeedbackIn
from feedback.services import correction_record, feedback_record
from tests.feedback.conftest import Exchange

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(db: Any) -> Client:
    user = get_user_model().objects.create_superuser("reviewer", "r@example.com", "pw")
    client = Client()
    client.force_login(user)
    return client


def correct(tenant: Tenant, exchange: Exchange, text: str) -> LearningItem:
    payload = CorrectionIn(
        conversation_id=exchange.conversation.pk,
        message_id=exchange.answer.pk,
        corrected_text=text,
        corrected_by="owner",
    )
    return LearningItem.objects.get(correction=correction_record(tenant=tenant, payload=payload))


def test_records_are_listed_and_read_only(staff: Client, tenant: Tenant, mine: Exchange) -> None:
    correct(tenant, mine, "fixed")
    feedback_record(tenant=tenant, payload=FeedbackIn(conversation_id=mine.conversation.pk, rating=4))
    for model in ("feedback", "ownercorrection", "responseanalytics", "voicetranscript", "learningitem"):
        assert staff.get(reverse(f"admin:feedback_{model}_changelist")).status_code == 200
    correction = OwnerCorrection.objects.get()
    page = staff.get(reverse("admin:feedback_ownercorrection_change", args=[correction.pk]))
    assert page.status_code == 200
    assert b'name="corrected_text"' not in page.content  # no editable field
    assert staff.get(reverse("admin:feedback_feedback_add")).status_code == 403


def test_the_item_page_shows_an_escaped_diff(staff: Client, tenant: Tenant, mine: Exchange) -> None:
    item = correct(tenant, mine, "We open <b>10</b> & close at 16.")

    page = staff.get(reverse("admin:feedback_learningitem_change", args=[item.pk])).content.decode()

    assert 'class="diff"' in page
    assert "&lt;b&gt;10&lt;/b&gt;" in page
    assert "<b>10</b>" not in page


def test_bulk_approve_and_reject_go_through_the_services(staff: Client, tenant: Tenant, mine: Exchange) -> None:
    first, second = correct(tenant, mine, "one"), correct(tenant, mine, "two")
    low = LearningItem.objects.get(
        feedback=feedback_record(tenant=tenant, payload=FeedbackIn(conversation_id=mine.conversation.pk, rating=1))
    )
    url = reverse("admin:feedback_learningitem_changelist")

    response = staff.post(
        url, {"action": "approve_selected", "_selected_action": [str(first.pk), str(low.pk)]}, follow=True
    )

    first.refresh_from_db()
    low.refresh_from_db()
    # Approving applies: the item ends applied, linked to the entry that now answers its question.
    assert (first.status, first.approved_answer, first.reviewed_by) == (LearningStatus.APPLIED, "one", "user:reviewer")
    assert first.entry is not None and (first.entry.question, first.entry.answer) == (mine.question.text, "one")
    assert low.status == LearningStatus.PENDING  # no proposed answer: refused, reported
    shown = [str(m) for m in response.context["messages"]]
    assert "Approved 1 item(s)." in shown
    assert any("Not done" in m for m in shown)

    staff.post(url, {"action": "reject_selected", "_selected_action": [str(first.pk), str(second.pk)]})
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == (LearningStatus.APPLIED, LearningStatus.REJECTED)
    assert Feedback.objects.count() == 1


def test_the_feedback_list_shows_the_counters_of_the_chosen_tenant(
    staff: Client, tenant: Tenant, other_tenant: Tenant, mine: Exchange, theirs: Exchange
) -> None:
    from feedback.knowledge import knowledge_lookup_count

    for rating in (5, 1):
        feedback_record(tenant=tenant, payload=FeedbackIn(conversation_id=mine.conversation.pk, rating=rating))
    feedback_record(tenant=other_tenant, payload=FeedbackIn(conversation_id=theirs.conversation.pk, thumbs="down"))
    correct(tenant, mine, "fixed")
    for decision in ("answer", "answer", "answer", "no_match"):
        knowledge_lookup_count(tenant=tenant, decision=decision)

    url = reverse("admin:feedback_feedback_changelist")
    mine_page = staff.get(url, {"tenant__id__exact": tenant.pk}).content.decode()
    assert f"Counters — {tenant}" in mine_page
    assert '<span class="rating">1: 1</span>' in mine_page and '<span class="rating">5: 1</span>' in mine_page
    assert "up 0 · down 0" in mine_page
    assert '<td id="stats-corrections">1</td>' in mine_page
    assert '<span class="queue">pending: 2</span>' in mine_page  # the correction and the rating of 1
    assert "3 answered, 0 suggested, 1 unmatched; hit rate 75%" in mine_page

    everyone = staff.get(url).content.decode()
    assert "Counters — all tenants" in everyone and "up 0 · down 1" in everyone
    assert '<span class="queue">pending: 3</span>' in everyone
