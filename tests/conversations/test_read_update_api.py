"""Listing, detail, upsert, update, soft delete and per-user statistics."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from conversations.models import Conversation, ConversationStatus, EmbeddingState
from tests.factories import ConversationFactory, MessageFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/conversations"


def test_list_filters_by_user_channel_status_time_and_metadata(api, tenant):
    wanted = ConversationFactory(tenant=tenant, external_user_id="u1", channel="sms", metadata={"shop": 7})
    ConversationFactory(tenant=tenant, external_user_id="u1", channel="web", metadata={"shop": 7})
    ConversationFactory(tenant=tenant, external_user_id="u2", channel="sms", metadata={"shop": 7})
    ConversationFactory(tenant=tenant, external_user_id="u1", channel="sms", metadata={"shop": 8}, status="closed")

    def ids(query):
        response = api.get(URL, query)
        assert response.status_code == 200, response.json()
        return [row["id"] for row in response.json()["results"]]

    assert ids({"user_id": "u1", "channel": "sms", "metadata": '{"shop": 7}'}) == [str(wanted.pk)]
    assert len(ids({"status": "closed"})) == 1
    assert ids({"created_after": (timezone.now() + timedelta(hours=1)).isoformat()}) == []
    assert len(ids({"created_before": (timezone.now() + timedelta(hours=1)).isoformat()})) == 4


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"channel": "pigeon"}, "channel"),
        ({"metadata": "[1]"}, "metadata"),
        ({"created_after": "soon"}, "created_after"),
        ({"cursor": "0"}, "cursor"),  # DRF's own answer is a 404
    ],
)
def test_list_rejects_bad_filters_naming_them(api, query, field):
    response = api.get(URL, query)
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_list_pages_by_cursor_newest_first_without_gaps_or_repeats(api, tenant):
    made = [ConversationFactory(tenant=tenant) for _ in range(7)]
    seen: list[str] = []
    response = api.get(URL, {"page_size": 3}).json()
    while True:
        seen.extend(row["id"] for row in response["results"])
        if not response["next"]:
            break
        response = api.get(response["next"]).json()
    assert seen == [str(c.pk) for c in reversed(made)]


def test_list_hides_soft_deleted_and_other_tenants(api, tenant, other_tenant):
    live = ConversationFactory(tenant=tenant)
    ConversationFactory(tenant=tenant, deleted_at=timezone.now())
    ConversationFactory(tenant=other_tenant)
    assert [row["id"] for row in api.get(URL).json()["results"]] == [str(live.pk)]


def test_detail_includes_messages_in_order(api, tenant):
    conv = ConversationFactory(tenant=tenant)
    first = MessageFactory(conversation=conv, text="first")
    second = MessageFactory(conversation=conv, text="second")
    body = api.get(f"{URL}/{conv.pk}").json()
    assert [m["id"] for m in body["messages"]] == [str(first.pk), str(second.pk)]
    assert body["message_count"] == 2
    assert body["messages_truncated"] is False


def test_detail_truncates_long_conversations_and_counts_them(api, tenant, settings):
    settings.CONVO_MAX_PAGE_SIZE = 3
    conv = ConversationFactory(tenant=tenant)
    for _ in range(5):
        MessageFactory(conversation=conv)
    body = api.get(f"{URL}/{conv.pk}").json()
    assert len(body["messages"]) == 3
    assert body["messages_truncated"] is True
    assert body["message_count"] == 5


def test_put_creates_under_the_given_id_then_replaces(api, tenant):
    conversation_id = uuid.uuid4()
    created = api.put(f"{URL}/{conversation_id}", {"user_id": "u1", "summary": "one"}, format="json")
    assert created.status_code == 201
    assert Conversation.objects.get(pk=conversation_id).tenant == tenant

    Conversation.objects.filter(pk=conversation_id).update(embedding_state=EmbeddingState.DONE)
    same = api.put(f"{URL}/{conversation_id}", {"user_id": "u1", "summary": "one", "status": "closed"}, format="json")
    assert same.status_code == 200
    stored = Conversation.objects.get(pk=conversation_id)
    assert stored.status == "closed"
    assert stored.embedding_state == EmbeddingState.DONE

    api.put(f"{URL}/{conversation_id}", {"user_id": "u1", "summary": "two"}, format="json")
    assert Conversation.objects.get(pk=conversation_id).embedding_state == EmbeddingState.PENDING


def test_patch_changes_only_what_is_given(api, tenant):
    conv = ConversationFactory(tenant=tenant, summary="keep", metadata={"a": 1})
    response = api.patch(f"{URL}/{conv.pk}", {"status": "handoff_pending"}, format="json")
    assert response.status_code == 200
    conv.refresh_from_db()
    assert (conv.status, conv.summary, conv.metadata) == ("handoff_pending", "keep", {"a": 1})


def test_patch_into_a_taken_active_session_is_409(api, tenant):
    ConversationFactory(tenant=tenant, external_user_id="u", session_id="s")
    closed = ConversationFactory(tenant=tenant, external_user_id="u", session_id="s", status="closed")
    response = api.patch(f"{URL}/{closed.pk}", {"status": "active"}, format="json")
    assert response.status_code == 409
    assert "session_id" in response.json()["error"]["fields"]


def test_delete_is_soft(api, tenant):
    conv = ConversationFactory(tenant=tenant)
    assert api.delete(f"{URL}/{conv.pk}").status_code == 204
    assert api.get(f"{URL}/{conv.pk}").status_code == 404
    assert api.delete(f"{URL}/{conv.pk}").status_code == 404
    conv.refresh_from_db()
    assert conv.deleted_at is not None
    # A soft-deleted conversation takes no more messages and frees its session.
    response = api.post("/api/v1/messages", {"conversation_id": str(conv.pk), "text": "x"}, format="json")
    assert response.status_code == 404


def test_user_stats(api, tenant):
    ConversationFactory(tenant=tenant, external_user_id="u1")
    ConversationFactory(tenant=tenant, external_user_id="u1", status=ConversationStatus.HANDOFF_COMPLETE)
    ConversationFactory(tenant=tenant, external_user_id="u1", embedding_state=EmbeddingState.DONE, status="closed")
    ConversationFactory(tenant=tenant, external_user_id="u1", deleted_at=timezone.now())
    old = ConversationFactory(tenant=tenant, external_user_id="u1")
    Conversation.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=40))
    ConversationFactory(tenant=tenant, external_user_id="u2")

    body = api.get("/api/v1/users/u1/stats", {"days": 30}).json()
    assert body == {
        "user_id": "u1",
        "days": 30,
        "total": 3,
        "active": 1,
        "with_embeddings": 1,
        "handoff_complete": 1,
        "avg_per_day": 0.1,
    }
    assert api.get("/api/v1/users/u1/stats", {"days": 0}).status_code == 400
