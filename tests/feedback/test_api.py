"""The feedback API: every endpoint, field-naming 4xx errors, limits at the limit and one past it,
the review transitions over HTTP, and the counters."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from conversations.models import Tenant
from feedback.models import Feedback, LearningItem, LearningStatus, OwnerCorrection, ResponseAnalytics, VoiceTranscript
from tests.feedback.conftest import ANSWER, QUESTION, Exchange, exchange_of

pytestmark = pytest.mark.django_db

API = "/api/v1"


def fields_of(response: Any, status: int = 400) -> dict[str, list[str]]:
    assert response.status_code == status, response.content
    return response.json()["error"]["fields"]


def correction_body(exchange: Exchange, **extra: Any) -> dict[str, Any]:
    return {
        "conversation_id": str(exchange.conversation.pk),
        "message_id": str(exchange.answer.pk),
        "corrected_text": "We open 10 to 16 on Sundays.",
        "corrected_by": "owner@example.com",
        **extra,
    }


def test_feedback_is_recorded_and_listed(api: APIClient, mine: Exchange) -> None:
    target = {"conversation_id": str(mine.conversation.pk), "message_id": str(mine.answer.pk)}

    low = api.post(f"{API}/feedback", {**target, "rating": 1, "comment": "wrong", "source": "telegram"}, format="json")
    high = api.post(f"{API}/feedback", {**target, "thumbs": "up"}, format="json")

    assert low.status_code == 201, low.content
    assert low.json() | {"id": None, "created_at": None} == {
        "id": None,
        "created_at": None,
        "conversation_id": str(mine.conversation.pk),
        "message_id": str(mine.answer.pk),
        "kind": "rating",
        "thumbs": None,
        "rating": 1,
        "comment": "wrong",
        "source": "telegram",
        "low": True,
    }
    assert (high.json()["thumbs"], high.json()["rating"], high.json()["low"]) == ("up", None, False)
    listed = api.get(f"{API}/feedback").json()
    assert [row["id"] for row in listed["results"]] == [high.json()["id"], low.json()["id"]]  # newest first


def test_corrections_analytics_and_transcripts_are_recorded(api: APIClient, mine: Exchange) -> None:
    correction = api.post(f"{API}/corrections", correction_body(mine, reason="hours changed"), format="json")
    analytics = api.post(
        f"{API}/analytics",
        {
            "conversation_id": str(mine.conversation.pk),
            "message_id": str(mine.answer.pk),
            "latency_ms": 840,
            "model": "gpt-4o-mini",
            "prompt_tokens": 1200,
            "completion_tokens": 80,
            "cost": "0.000228",
            "from_cache": True,
        },
        format="json",
    )
    transcript = api.post(
        f"{API}/transcripts",
        {
            "conversation_id": str(mine.conversation.pk),
            "text": "hello, are you open on sunday",
            "language": "en",
            "duration_seconds": 3.5,
            "audio_url": "https://cdn.example.com/a.ogg",
        },
        format="json",
    )

    assert correction.status_code == 201, correction.content
    body = correction.json()
    assert (body["original_response"], body["corrected_by"]) == (ANSWER, "owner@example.com")
    item = LearningItem.objects.get(pk=body["learning_item_id"])
    assert (item.question, item.proposed_answer) == (QUESTION, "We open 10 to 16 on Sundays.")
    assert analytics.status_code == 201, analytics.content
    assert (analytics.json()["cost"], analytics.json()["from_cache"]) == ("0.000228", True)
    assert transcript.status_code == 201, transcript.content
    assert transcript.json()["duration_seconds"] == "3.500"
    for path in ("corrections", "analytics", "transcripts"):
        assert len(api.get(f"{API}/{path}").json()["results"]) == 1


@pytest.mark.parametrize("path", ["feedback", "corrections", "analytics", "transcripts"])
def test_lists_page_and_filter_by_conversation(api: APIClient, tenant: Tenant, mine: Exchange, path: str) -> None:
    other = exchange_of(tenant)
    make = {
        "feedback": lambda ex: Feedback.objects.create(
            tenant=tenant, conversation=ex.conversation, kind="rating", value=4
        ),
        "corrections": lambda ex: OwnerCorrection.objects.create(
            tenant=tenant, conversation=ex.conversation, corrected_text="x", corrected_by="o"
        ),
        "analytics": lambda ex: ResponseAnalytics.objects.create(
            tenant=tenant, conversation=ex.conversation, latency_ms=1, model="m"
        ),
        "transcripts": lambda ex: VoiceTranscript.objects.create(
            tenant=tenant, conversation=ex.conversation, text="t", duration_seconds=1
        ),
    }[path]
    ours = [make(mine) for _ in range(3)]
    make(other)

    first = api.get(f"{API}/{path}", {"conversation_id": str(mine.conversation.pk), "page_size": 2}).json()
    second = api.get(first["next"]).json()

    seen = [row["id"] for row in first["results"] + second["results"]]
    assert sorted(seen) == sorted(str(row.pk) for row in ours)
    assert second["next"] is None
    assert len(api.get(f"{API}/{path}").json()["results"]) == 4
    assert "conversation_id" in fields_of(api.get(f"{API}/{path}", {"conversation_id": "nope"}))
    assert "page_size" in fields_of(api.get(f"{API}/{path}", {"page_size": 0}))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "conversation_id"),
        ({"rating": 6}, "rating"),
        ({"rating": 0}, "rating"),
        ({"thumbs": "sideways"}, "thumbs"),
        ({"rating": 3, "thumbs": "up"}, "body"),
        ({"rating": None}, "body"),
        ({"rating": 3, "source": "pigeon"}, "source"),
        ({"rating": 3, "tenant": 1}, "tenant"),
        ({"rating": 3, "message_id": "not-a-uuid"}, "message_id"),
    ],
)
def test_bad_feedback_is_a_400_naming_the_field(
    api: APIClient, mine: Exchange, body: dict[str, Any], field: str
) -> None:
    full = {"conversation_id": str(mine.conversation.pk), **body} if body else {}
    assert field in fields_of(api.post(f"{API}/feedback", full, format="json"))
    assert not Feedback.objects.exists()


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("corrections", {"corrected_text": "  "}, "corrected_text"),
        ("corrections", {"corrected_by": ""}, "corrected_by"),
        ("analytics", {"latency_ms": -1}, "latency_ms"),
        ("analytics", {"cost": "-0.01"}, "cost"),
        ("analytics", {"model": ""}, "model"),
        ("analytics", {"prompt_tokens": 2**31}, "prompt_tokens"),
        ("transcripts", {"duration_seconds": -1}, "duration_seconds"),
        ("transcripts", {"audio_url": "ftp://x"}, "audio_url"),
        ("transcripts", {"text": ""}, "text"),
    ],
)
def test_bad_records_are_a_400_naming_the_field(
    api: APIClient, mine: Exchange, path: str, body: dict[str, Any], field: str
) -> None:
    valid = {
        "corrections": correction_body(mine),
        "analytics": {"conversation_id": str(mine.conversation.pk), "latency_ms": 10, "model": "m"},
        "transcripts": {"conversation_id": str(mine.conversation.pk), "text": "hi", "duration_seconds": 1},
    }[path]
    assert field in fields_of(api.post(f"{API}/{path}", {**valid, **body}, format="json"))


def test_a_message_of_another_conversation_is_a_400(api: APIClient, tenant: Tenant, mine: Exchange) -> None:
    other = exchange_of(tenant)
    body = {"conversation_id": str(mine.conversation.pk), "message_id": str(other.answer.pk), "rating": 1}
    assert "message_id" in fields_of(api.post(f"{API}/feedback", body, format="json"))


@pytest.mark.parametrize(
    ("setting", "path", "field"),
    [
        ("FEEDBACK_MAX_COMMENT_CHARS", "feedback", "comment"),
        ("FEEDBACK_MAX_ANSWER_CHARS", "corrections", "corrected_text"),
        ("FEEDBACK_MAX_ANSWER_CHARS", "corrections", "original_response"),
        ("FEEDBACK_MAX_REASON_CHARS", "corrections", "reason"),
        ("FEEDBACK_MAX_TRANSCRIPT_CHARS", "transcripts", "text"),
    ],
)
def test_text_limits_at_the_limit_and_one_past(
    api: APIClient, mine: Exchange, settings: Any, setting: str, path: str, field: str
) -> None:
    setattr(settings, setting, 20)
    base = {
        "feedback": {"conversation_id": str(mine.conversation.pk), "rating": 4},
        "corrections": correction_body(mine, corrected_text="short"),
        "transcripts": {"conversation_id": str(mine.conversation.pk), "text": "hi", "duration_seconds": 1},
    }[path]

    at_limit = api.post(f"{API}/{path}", {**base, field: "x" * 20}, format="json")
    past = api.post(f"{API}/{path}", {**base, field: "x" * 21}, format="json")

    assert at_limit.status_code == 201, at_limit.content
    assert field in fields_of(past)


@pytest.mark.parametrize("setting", ["FEEDBACK_MAX_ANSWER_CHARS", "FEEDBACK_MAX_REASON_CHARS"])
def test_review_limits_at_the_limit_and_one_past(
    api: APIClient, tenant: Tenant, mine: Exchange, settings: Any, setting: str
) -> None:
    setattr(settings, setting, 20)
    field = "answer" if setting == "FEEDBACK_MAX_ANSWER_CHARS" else "note"
    items = []
    for _ in range(2):
        api.post(f"{API}/corrections", correction_body(mine, corrected_text="short"), format="json")
    items = list(LearningItem.objects.order_by("created_at", "id"))

    past = api.post(f"{API}/learning-items/{items[0].pk}/approve", {field: "x" * 21}, format="json")
    at_limit = api.post(f"{API}/learning-items/{items[1].pk}/approve", {field: "x" * 20}, format="json")

    assert field in fields_of(past)
    assert at_limit.status_code == 200, at_limit.content


def test_review_over_http(api: APIClient, mine: Exchange) -> None:
    for text in ("first fix", "second fix"):
        api.post(f"{API}/corrections", correction_body(mine, corrected_text=text), format="json")
    api.post(f"{API}/feedback", {"conversation_id": str(mine.conversation.pk), "thumbs": "down"}, format="json")
    queue = api.get(f"{API}/learning-items", {"status": "pending"}).json()["results"]
    assert [row["source"] for row in queue] == ["correction", "correction", "low_rating"]  # oldest first
    first, second, low = (row["id"] for row in queue)

    approved = api.post(f"{API}/learning-items/{first}/approve", {"answer": "edited fix"}, format="json")
    assert approved.status_code == 200, approved.content
    assert approved.json()["status"] == "applied"  # approving takes it into the knowledge base
    assert approved.json()["entry_id"] is not None
    assert approved.json()["approved_answer"] == "edited fix"
    assert approved.json()["reviewed_by"].startswith("api-key:")
    assert api.post(f"{API}/learning-items/{first}/approve", {}, format="json").status_code == 409
    assert api.post(f"{API}/learning-items/{first}/reject", {}, format="json").status_code == 409

    rejected = api.post(f"{API}/learning-items/{second}/reject", {"note": "duplicate"}, format="json")
    assert (rejected.json()["status"], rejected.json()["review_note"]) == ("rejected", "duplicate")
    assert api.post(f"{API}/learning-items/{second}/approve", {}, format="json").status_code == 409

    assert "answer" in fields_of(api.post(f"{API}/learning-items/{low}/approve", {}, format="json"))
    assert api.get(f"{API}/learning-items/{low}").json()["status"] == "pending"
    assert [r["id"] for r in api.get(f"{API}/learning-items", {"status": "applied"}).json()["results"]] == [first]
    assert [r["id"] for r in api.get(f"{API}/learning-items", {"source": "low_rating"}).json()["results"]] == [low]
    assert "status" in fields_of(api.get(f"{API}/learning-items", {"status": "maybe"}))
    assert "note" in fields_of(api.post(f"{API}/learning-items/{low}/reject", {"note": 5}, format="json"))
    assert LearningItem.objects.get(pk=low).status == LearningStatus.PENDING


def test_stats_count_feedback_corrections_and_the_queue(api: APIClient, other_api: APIClient, mine: Exchange) -> None:
    target = {"conversation_id": str(mine.conversation.pk)}
    for verdict in ({"rating": 5}, {"rating": 5}, {"rating": 1, "source": "sms"}, {"thumbs": "up"}, {"thumbs": "down"}):
        api.post(f"{API}/feedback", {**target, **verdict}, format="json")
    api.post(f"{API}/corrections", correction_body(mine), format="json")

    stats = api.get(f"{API}/feedback/stats").json()

    assert stats == {
        "feedback": {
            "total": 5,
            "ratings": {"1": 1, "2": 0, "3": 0, "4": 0, "5": 2},
            "thumbs": {"up": 1, "down": 1},
            "by_channel": {"sms": 1, "web": 4},
        },
        "corrections": 1,
        "learning_items": {"pending": 3, "approved": 0, "rejected": 0, "applied": 0},
        "knowledge": {"entries": 0, "active": 0},
        "lookups": {"days": 30, "answered": 0, "suggested": 0, "unmatched": 0, "hit_rate": None},
    }
    other = other_api.get(f"{API}/feedback/stats").json()
    assert other["feedback"]["total"] == 0 and other["corrections"] == 0
    assert other["learning_items"]["pending"] == 0
