"""No tenant reaches another's feedback: every endpoint that takes an id, in the path, the body or
a filter, answers 404 naming the field for another tenant's id and changes nothing; lists and
stats hold only the caller's own rows."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from conversations.models import Tenant
from feedback.models import Feedback, LearningItem, OwnerCorrection, ResponseAnalytics, VoiceTranscript
from feedback.payloads import CorrectionIn
from feedback.services import correction_record
from tests.feedback.conftest import Exchange

pytestmark = pytest.mark.django_db

API = "/api/v1"


def snapshot() -> list[Any]:
    return [
        Feedback.objects.count(),
        OwnerCorrection.objects.count(),
        ResponseAnalytics.objects.count(),
        VoiceTranscript.objects.count(),
        list(LearningItem.objects.order_by("pk").values_list("pk", "status", "approved_answer")),
    ]


def not_found(response: Any, field: str | None) -> None:
    assert response.status_code == 404, response.content
    error = response.json()["error"]
    assert error["code"] == "not_found"
    if field is not None:
        assert field in error["fields"]


def _bodies(mine: Exchange, theirs: Exchange) -> list[tuple[str, dict[str, Any], str]]:
    """(path, body, field): each body names one of their ids, the rest ours."""
    own = {"conversation_id": str(mine.conversation.pk)}
    their_conversation = {"conversation_id": str(theirs.conversation.pk)}
    their_message = {**own, "message_id": str(theirs.answer.pk)}
    correction = {"corrected_text": "x", "corrected_by": "o"}
    analytics = {"latency_ms": 1, "model": "m"}
    transcript = {"text": "t", "duration_seconds": 1}
    return [
        ("feedback", {**their_conversation, "rating": 1}, "conversation_id"),
        ("feedback", {**their_message, "rating": 1}, "message_id"),
        ("corrections", {**their_conversation, **correction}, "conversation_id"),
        ("corrections", {**their_message, **correction}, "message_id"),
        ("analytics", {**their_conversation, **analytics}, "conversation_id"),
        ("analytics", {**their_message, **analytics}, "message_id"),
        ("transcripts", {**their_conversation, **transcript}, "conversation_id"),
    ]


@pytest.mark.parametrize("case", range(7))
def test_posting_about_another_tenants_conversation_or_message_is_not_found(
    api: APIClient, mine: Exchange, theirs: Exchange, case: int
) -> None:
    path, body, field = _bodies(mine, theirs)[case]
    before = snapshot()

    not_found(api.post(f"{API}/{path}", body, format="json"), field)

    assert snapshot() == before


@pytest.mark.parametrize("path", ["feedback", "corrections", "analytics", "transcripts"])
def test_filtering_by_another_tenants_conversation_is_not_found(api: APIClient, theirs: Exchange, path: str) -> None:
    not_found(api.get(f"{API}/{path}", {"conversation_id": str(theirs.conversation.pk)}), "conversation_id")


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [("get", "", None), ("post", "/approve", {"answer": "pwned"}), ("post", "/reject", {"note": "pwned"})],
)
def test_another_tenants_learning_item_is_not_found(
    api: APIClient, other_tenant: Tenant, theirs: Exchange, method: str, suffix: str, body: Any
) -> None:
    payload = CorrectionIn(conversation_id=theirs.conversation.pk, corrected_text="fix", corrected_by="them")
    item = LearningItem.objects.get(correction=correction_record(tenant=other_tenant, payload=payload))
    before = snapshot()

    not_found(getattr(api, method)(f"{API}/learning-items/{item.pk}{suffix}", body, format="json"), None)

    assert snapshot() == before


def test_lists_hold_only_the_callers_rows(
    api: APIClient, other_api: APIClient, mine: Exchange, theirs: Exchange
) -> None:
    own = {"conversation_id": str(mine.conversation.pk)}
    their = {"conversation_id": str(theirs.conversation.pk)}
    for client, target in ((api, own), (other_api, their)):
        assert client.post(f"{API}/feedback", {**target, "rating": 1}, format="json").status_code == 201
        body = {**target, "corrected_text": "x", "corrected_by": "o"}
        assert client.post(f"{API}/corrections", body, format="json").status_code == 201
        body = {**target, "latency_ms": 1, "model": "m"}
        assert client.post(f"{API}/analytics", body, format="json").status_code == 201
        body = {**target, "text": "t", "duration_seconds": 1}
        assert client.post(f"{API}/transcripts", body, format="json").status_code == 201

    for path in ("feedback", "corrections", "analytics", "transcripts"):
        rows = api.get(f"{API}/{path}").json()["results"]
        assert [row["conversation_id"] for row in rows] == [str(mine.conversation.pk)]
    items = api.get(f"{API}/learning-items").json()["results"]
    assert len(items) == 2
    assert {row["id"] for row in items} == {
        str(pk) for pk in LearningItem.objects.filter(tenant=mine.conversation.tenant).values_list("pk", flat=True)
    }
