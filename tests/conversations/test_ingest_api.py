"""Ingest over the API: acknowledgement, idempotency, batches, inbound messages."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from conversations.models import Conversation, ConversationStatus, EmbeddingState, Message

pytestmark = pytest.mark.django_db

URL = "/api/v1/conversations"


def conversation(**overrides):
    body = {"user_id": "user-1", "channel": "telegram", "session_id": "s-1", "messages": [{"text": "How much is it?"}]}
    body.update(overrides)
    return body


def test_create_stores_rows_pending_and_answers_202_with_ids(api, tenant):
    response = api.post(
        URL, conversation(messages=[{"text": "hi"}, {"role": "assistant", "text": "hello"}]), format="json"
    )

    assert response.status_code == 202
    body = response.json()
    assert body["state"] == "pending"
    assert body["replayed"] is False
    stored = Conversation.objects.get(pk=body["id"])
    assert stored.tenant == tenant
    assert stored.embedding_state == EmbeddingState.PENDING
    messages = list(Message.objects.filter(conversation=stored).order_by("created_at", "id"))
    assert [str(m.id) for m in messages] == body["message_ids"]
    assert [m.role for m in messages] == ["user", "assistant"]
    assert all(m.embedding_state == EmbeddingState.PENDING for m in messages)


def test_timestamps_are_kept_by_the_database(api):
    sent_at = "2026-01-02T03:04:05Z"
    body = api.post(URL, conversation(messages=[{"text": "later", "sent_at": sent_at}]), format="json").json()
    stored = Conversation.objects.get(pk=body["id"])
    assert stored.last_message_at.isoformat().startswith("2026-01-02T03:04:05")
    assert stored.updated_at >= stored.created_at

    before = stored.updated_at
    api.patch(f"{URL}/{stored.pk}", {"summary": "changed"}, format="json")
    stored.refresh_from_db()
    assert stored.updated_at > before


def test_external_id_replay_returns_the_same_conversation(api):
    first = api.post(URL, conversation(external_id="ext-1"), format="json").json()
    again = api.post(URL, conversation(external_id="ext-1"), format="json")

    assert again.status_code == 202
    assert again.json()["id"] == first["id"]
    assert again.json()["replayed"] is True
    assert Conversation.objects.filter(external_id="ext-1").count() == 1
    assert Message.objects.filter(conversation_id=first["id"]).count() == 1


def test_external_id_with_a_different_body_is_a_conflict_naming_it(api):
    api.post(URL, conversation(external_id="ext-1"), format="json")
    response = api.post(URL, conversation(external_id="ext-1", summary="other"), format="json")

    assert response.status_code == 409
    assert "external_id" in response.json()["error"]["fields"]


def test_idempotency_key_replays_the_stored_answer(api):
    headers = {"HTTP_IDEMPOTENCY_KEY": "key-1"}
    first = api.post(URL, conversation(), format="json", **headers)
    again = api.post(URL, conversation(), format="json", **headers)

    assert again.status_code == first.status_code == 202
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Conversation.objects.count() == 1


def test_idempotency_key_with_a_different_body_is_409(api):
    api.post(URL, conversation(), format="json", HTTP_IDEMPOTENCY_KEY="key-1")
    response = api.post(URL, conversation(summary="different"), format="json", HTTP_IDEMPOTENCY_KEY="key-1")

    assert response.status_code == 409
    assert "Idempotency-Key" in response.json()["error"]["fields"]


def test_idempotency_keys_are_per_tenant(api, other_api):
    mine = api.post(URL, conversation(), format="json", HTTP_IDEMPOTENCY_KEY="shared").json()
    theirs = other_api.post(URL, conversation(), format="json", HTTP_IDEMPOTENCY_KEY="shared").json()
    assert mine["id"] != theirs["id"]


def test_a_second_active_conversation_for_the_same_session_is_refused(api):
    api.post(URL, conversation(), format="json")
    response = api.post(URL, conversation(), format="json")
    assert response.status_code == 409
    assert "session_id" in response.json()["error"]["fields"]


@pytest.mark.parametrize("field", ["tenant", "tenant_id", "embedding_state", "id", "created_at", "deleted_at"])
def test_server_owned_fields_cannot_be_assigned(api, field):
    response = api.post(URL, conversation(**{field: "x"}), format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert Conversation.objects.count() == 0


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"user_id": ""}, "user_id"),
        ({"channel": "pigeon"}, "channel"),
        ({"status": "open"}, "status"),
        ({"metadata": [1, 2]}, "metadata"),
        ({"messages": [{"text": "   "}]}, "messages.0.text"),
        ({"messages": [{"text": "ok"}, {"role": "robot", "text": "x"}]}, "messages.1.role"),
        ({"messages": [{"text": "x", "sender_avatar_url": "javascript:alert(1)"}]}, "messages.0.sender_avatar_url"),
        ({"messages": [{"text": "x", "sent_at": "2024-01-01T00:00:00"}]}, "messages.0.sent_at"),
        ({"summary": "nul\x00byte"}, "summary"),
        ({"messages": [{"text": "x", "sender_name": "nul\x00byte"}]}, "messages.0.sender_name"),
        (
            {"messages": [{"text": "x", "sender_avatar_url": "https://a.example/\x00.png"}]},
            "messages.0.sender_avatar_url",
        ),
    ],
)
def test_bad_fields_answer_400_naming_the_field(api, overrides, field):
    response = api.post(URL, conversation(**overrides), format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"], response.json()


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"'])
def test_a_body_that_is_not_a_json_object_is_400(api, body):
    response = api.generic("POST", URL, body, content_type="application/json")
    assert response.status_code == 400
    assert "body" in response.json()["error"]["fields"]


def test_batch_stores_the_good_items_and_names_the_bad_ones(api):
    items = [
        conversation(session_id="a"),
        conversation(session_id="b", channel="fax"),
        conversation(session_id="c", messages=[{"text": ""}]),
        conversation(session_id="d"),
        "not an object",
    ]
    response = api.post(f"{URL}/batch", {"conversations": items}, format="json")

    assert response.status_code == 202
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (2, 3)
    results = body["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
    assert "conversations.1.channel" in results[1]["error"]["fields"]
    assert "conversations.2.messages.0.text" in results[2]["error"]["fields"]
    assert "conversations.4" in results[4]["error"]["fields"]
    stored = set(Conversation.objects.values_list("session_id", flat=True))
    assert stored == {"a", "d"}
    assert {str(i) for i in Conversation.objects.values_list("id", flat=True)} == {results[0]["id"], results[3]["id"]}


def test_batch_with_only_bad_items_is_400_and_stores_nothing(api):
    response = api.post(f"{URL}/batch", {"conversations": [{"user_id": ""}]}, format="json")
    assert response.status_code == 400
    assert response.json()["rejected"] == 1
    assert Conversation.objects.count() == 0


def test_batch_replays_and_conflicts_are_reported_per_item(api):
    api.post(URL, conversation(external_id="e1", session_id="x"), format="json")
    items = [
        conversation(external_id="e1", session_id="x"),  # same body: replay
        conversation(external_id="e1", session_id="y"),  # other body: conflict
        conversation(session_id="x"),  # active session taken
        conversation(session_id="z", messages=[{"text": "a", "external_id": "m1"}, {"text": "b", "external_id": "m1"}]),
    ]
    results = api.post(f"{URL}/batch", {"conversations": items}, format="json").json()["results"]
    assert results[0]["replayed"] is True
    assert "external_id" in results[1]["error"]["fields"]
    assert "session_id" in results[2]["error"]["fields"]
    assert "messages.1.external_id" in results[3]["error"]["fields"]


def test_inbound_message_continues_the_active_conversation_of_its_session(api, tenant):
    first = api.post("/api/v1/messages", {"user_id": "u", "session_id": "s", "text": "hello"}, format="json").json()
    second = api.post("/api/v1/messages", {"user_id": "u", "session_id": "s", "text": "again"}, format="json").json()
    assert first["conversation_id"] == second["conversation_id"]
    assert Message.objects.filter(conversation_id=first["conversation_id"]).count() == 2

    Conversation.objects.filter(pk=first["conversation_id"]).update(status=ConversationStatus.CLOSED)
    third = api.post("/api/v1/messages", {"user_id": "u", "session_id": "s", "text": "new day"}, format="json").json()
    assert third["conversation_id"] != first["conversation_id"]
    assert Conversation.objects.filter(tenant=tenant).count() == 2


def test_inbound_message_needs_a_conversation_or_a_session(api):
    response = api.post("/api/v1/messages", {"user_id": "u", "text": "hello"}, format="json")
    assert response.status_code == 400
    assert "body" in response.json()["error"]["fields"]


def test_inbound_message_to_an_explicit_conversation(api):
    created = api.post(URL, conversation(), format="json").json()
    response = api.post("/api/v1/messages", {"conversation_id": created["id"], "text": "more"}, format="json")
    assert response.status_code == 202
    assert response.json()["conversation_id"] == created["id"]


def test_inbound_message_external_id_replay_and_conflict(api):
    body = {"user_id": "u", "session_id": "s", "text": "hi", "external_id": "tg-1"}
    first = api.post("/api/v1/messages", body, format="json").json()
    again = api.post("/api/v1/messages", body, format="json").json()
    assert again["id"] == first["id"]
    assert again["replayed"] is True
    conflict = api.post("/api/v1/messages", {**body, "text": "edited"}, format="json")
    assert conflict.status_code == 409
    assert "external_id" in conflict.json()["error"]["fields"]
    assert Message.objects.count() == 1


def test_message_batch_mixes_sessions_and_reports_each_item(api):
    items = [
        {"user_id": "u1", "session_id": "s", "text": "a"},
        {"user_id": "u2", "session_id": "s", "text": "b"},
        {"user_id": "u1", "session_id": "s", "text": "c"},
        {"conversation_id": str(uuid.uuid4()), "text": "d"},
        {"user_id": "u3", "session_id": "s", "text": ""},
    ]
    body = api.post("/api/v1/messages/batch", {"messages": items}, format="json").json()
    results = body["results"]
    assert (body["accepted"], body["rejected"]) == (3, 2)
    assert results[0]["conversation_id"] == results[2]["conversation_id"] != results[1]["conversation_id"]
    assert results[3]["error"]["code"] == "not_found"
    assert "messages.4.text" in results[4]["error"]["fields"]


def test_messages_can_be_added_to_a_conversation(api):
    created = api.post(URL, conversation(), format="json").json()
    response = api.post(
        f"{URL}/{created['id']}/messages", {"messages": [{"text": "one"}, {"text": "two"}]}, format="json"
    )
    assert response.status_code == 202
    listed = api.get(f"{URL}/{created['id']}/messages").json()["results"]
    assert [m["text"] for m in listed] == ["How much is it?", "one", "two"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"metadata": {"a": 1e20}}, "metadata"),
        ({"metadata": {"a": [2**63]}}, "metadata"),
        ({"messages": [{"text": "x", "raw_payload": {"n": -(2**64)}}]}, "messages.0.raw_payload"),
        ({"messages": [{"text": "x", "sent_at": "0001-01-01T00:00:00+05:00"}]}, "messages.0.sent_at"),
        ({"messages": [{"text": "x", "sent_at": "9999-12-31T23:59:59-05:00"}]}, "messages.0.sent_at"),
    ],
)
def test_values_that_could_not_be_read_back_are_refused(api, overrides, field):
    response = api.post(URL, conversation(**overrides), format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert api.get(URL).status_code == 200


def test_replaying_a_conversation_with_message_external_ids_is_a_replay(api):
    body = conversation(external_id="c1", messages=[{"text": "hi", "external_id": "m1"}])
    first = api.post(URL, body, format="json").json()
    again = api.post(URL, body, format="json")
    assert again.status_code == 202
    assert again.json()["id"] == first["id"]
    assert again.json()["message_ids"] == first["message_ids"]


def test_a_rejected_item_does_not_block_later_items_of_the_batch(api):
    api.post(URL, conversation(session_id="seed", messages=[{"text": "b", "external_id": "b"}]), format="json")
    items = [
        conversation(session_id="one", messages=[{"text": "a", "external_id": "a"}, {"text": "b", "external_id": "b"}]),
        conversation(session_id="two", messages=[{"text": "a", "external_id": "a"}]),
    ]
    results = api.post(f"{URL}/batch", {"conversations": items}, format="json").json()["results"]
    assert "messages.1.external_id" in results[0]["error"]["fields"]
    assert "id" in results[1]


@pytest.mark.parametrize("field", ["user_id", "status", "channel", "summary", "transcript", "metadata"])
def test_patch_with_null_is_400_naming_the_field(api, field):
    created = api.post(URL, conversation(), format="json").json()
    response = api.patch(f"{URL}/{created['id']}", {field: None}, format="json")
    assert response.status_code == 400
    assert field in str(response.json()["error"]["fields"])


def test_patch_may_clear_the_session(api):
    created = api.post(URL, conversation(), format="json").json()
    assert api.patch(f"{URL}/{created['id']}", {"session_id": None}, format="json").status_code == 200


def test_odd_query_and_path_values_are_4xx(api):
    created = api.post(URL, conversation(), format="json").json()
    assert api.get(f"{URL}/{created['id']}/messages", {"page_size": "\u00b2"}).status_code == 400
    assert api.get(URL, {"metadata": '{"a": "\\u0000"}'}).status_code == 400
    assert api.get("/api/v1/users/a%00b/stats").status_code == 400


def test_a_single_conversation_with_a_taken_message_external_id_is_refused_and_leaves_nothing(api):
    api.post(URL, conversation(session_id="first", messages=[{"text": "a", "external_id": "m9"}]), format="json")
    conversations, messages = Conversation.objects.count(), Message.objects.count()
    body = conversation(session_id="second", messages=[{"text": "x"}, {"text": "y", "external_id": "m9"}])
    with CaptureQueriesContext(connection) as captured:
        response = api.post(URL, body, format="json")
    assert response.status_code == 409
    assert "messages.1.external_id" in response.json()["error"]["fields"]
    assert (Conversation.objects.count(), Message.objects.count()) == (conversations, messages)
    # One payload needs no look-up of stored external ids: the insert itself tells.
    assert not any("SELECT external_id, true" in (query["sql"] or "") for query in captured.captured_queries)
    # The session the refused conversation briefly held is free again.
    again = api.post(URL, conversation(session_id="second"), format="json")
    assert again.status_code == 202
