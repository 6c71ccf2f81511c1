"""Every endpoint that takes an id answers 404 to another tenant, and changes nothing."""

from __future__ import annotations

import pytest

from conversations.models import Conversation, Message
from tests.factories import ConversationFactory, MessageFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def theirs(other_tenant):
    conversation = ConversationFactory(tenant=other_tenant, summary="secret", status="active")
    MessageFactory(conversation=conversation, text="secret message")
    return conversation


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("get", "", None),
        ("patch", "", {"summary": "pwned"}),
        ("put", "", {"user_id": "attacker", "summary": "pwned"}),
        ("delete", "", None),
        ("get", "/messages", None),
        ("post", "/messages", {"messages": [{"text": "injected"}]}),
    ],
)
def test_another_tenants_conversation_is_not_found(api, theirs, method, suffix, body):
    response = getattr(api, method)(f"/api/v1/conversations/{theirs.pk}{suffix}", body, format="json")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    theirs.refresh_from_db()
    assert (theirs.summary, theirs.deleted_at, theirs.external_user_id) == ("secret", None, theirs.external_user_id)
    assert Message.objects.filter(conversation=theirs).count() == 1


def test_inbound_message_to_another_tenants_conversation_is_not_found(api, theirs):
    response = api.post("/api/v1/messages", {"conversation_id": str(theirs.pk), "text": "x"}, format="json")
    assert response.status_code == 404
    assert Message.objects.filter(conversation=theirs).count() == 1


def test_batch_message_to_another_tenants_conversation_is_rejected_alone(api, theirs):
    items = [{"conversation_id": str(theirs.pk), "text": "x"}, {"user_id": "u", "session_id": "s", "text": "ok"}]
    results = api.post("/api/v1/messages/batch", {"messages": items}, format="json").json()["results"]
    assert results[0]["error"]["code"] == "not_found"
    assert "id" in results[1]
    assert Message.objects.filter(conversation=theirs).count() == 1


def test_stats_and_lists_never_count_another_tenants_rows(api, theirs):
    assert api.get("/api/v1/conversations").json()["results"] == []
    assert api.get(f"/api/v1/users/{theirs.external_user_id}/stats").json()["total"] == 0


def test_external_ids_and_sessions_are_per_tenant(api, other_api):
    body = {"user_id": "u", "session_id": "s", "external_id": "same"}
    assert api.post("/api/v1/conversations", body, format="json").status_code == 202
    assert other_api.post("/api/v1/conversations", body, format="json").status_code == 202
    assert Conversation.objects.filter(external_id="same").count() == 2
