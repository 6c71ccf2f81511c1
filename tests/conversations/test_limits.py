"""Every limit is a setting, enforced at the limit (accepted) and one past it (4xx naming it)."""

from __future__ import annotations

import orjson
import pytest

from conversations.models import Conversation, Message
from tests.factories import ConversationFactory, MessageFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/conversations"


def test_text_length_limit(api, settings):
    limit = settings.CONVO_MAX_TEXT_CHARS
    at = api.post(URL, {"user_id": "u", "messages": [{"text": "x" * limit}]}, format="json")
    past = api.post(URL, {"user_id": "v", "messages": [{"text": "x" * (limit + 1)}]}, format="json")
    assert at.status_code == 202
    assert past.status_code == 400
    assert "messages.0.text" in past.json()["error"]["fields"]


def test_transcript_length_limit(api, settings):
    settings.CONVO_MAX_TRANSCRIPT_CHARS = 1000
    assert api.post(URL, {"user_id": "u", "transcript": "x" * 1000}, format="json").status_code == 202
    past = api.post(URL, {"user_id": "v", "transcript": "x" * 1001}, format="json")
    assert past.status_code == 400
    assert "transcript" in past.json()["error"]["fields"]


def test_messages_per_conversation_limit(api, settings):
    settings.CONVO_MAX_MESSAGES_PER_CONVERSATION = 4
    at = api.post(URL, {"user_id": "u", "messages": [{"text": "m"}] * 4}, format="json")
    past = api.post(URL, {"user_id": "v", "messages": [{"text": "m"}] * 5}, format="json")
    assert at.status_code == 202
    assert past.status_code == 400
    assert "messages" in past.json()["error"]["fields"]


def test_json_field_size_limit(api, settings):
    settings.CONVO_MAX_JSON_FIELD_BYTES = 100
    fits = {"k": "v" * (100 - len(orjson.dumps({"k": ""})))}
    assert len(orjson.dumps(fits)) == 100
    assert api.post(URL, {"user_id": "u", "metadata": fits}, format="json").status_code == 202
    past = api.post(URL, {"user_id": "v", "metadata": {"k": fits["k"] + "v"}}, format="json")
    assert past.status_code == 400
    assert "metadata" in past.json()["error"]["fields"]


def test_batch_size_limit_at_the_default_of_1000(api, settings):
    assert settings.CONVO_MAX_BATCH_ITEMS == 1000
    items = [{"user_id": f"u{i}"} for i in range(1000)]
    at = api.post(f"{URL}/batch", {"conversations": items}, format="json")
    assert at.status_code == 202
    assert at.json()["accepted"] == 1000
    past = api.post(f"{URL}/batch", {"conversations": [*items, {"user_id": "one-more"}]}, format="json")
    assert past.status_code == 400
    assert past.json()["error"]["code"] == "batch_too_large"
    assert "conversations" in past.json()["error"]["fields"]
    assert Conversation.objects.count() == 1000


def test_message_batch_size_limit(api, settings):
    settings.CONVO_MAX_BATCH_ITEMS = 3
    item = {"user_id": "u", "session_id": "s", "text": "hi"}
    assert api.post("/api/v1/messages/batch", {"messages": [item] * 3}, format="json").status_code == 202
    past = api.post("/api/v1/messages/batch", {"messages": [item] * 4}, format="json")
    assert past.status_code == 400
    assert "messages" in past.json()["error"]["fields"]


def test_body_size_limit_answers_413_json(api, settings):
    settings.CONVO_MAX_BODY_BYTES = 2000
    base = orjson.dumps({"user_id": "u", "summary": ""})
    at = base.replace(b'"summary":""', b'"summary":"' + b"x" * (2000 - len(base)) + b'"')
    assert len(at) == 2000
    assert api.generic("POST", URL, at, content_type="application/json").status_code == 202
    past = at.replace(b'"user_id":"u"', b'"user_id":"uu"')
    response = api.generic("POST", URL, past, content_type="application/json")
    assert response.status_code == 413
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == "payload_too_large"


def test_page_size_limit(api, tenant, settings):
    settings.CONVO_MAX_PAGE_SIZE = 5
    for _ in range(6):
        ConversationFactory(tenant=tenant)
    assert len(api.get(URL, {"page_size": 5}).json()["results"]) == 5
    past = api.get(URL, {"page_size": 6})
    assert past.status_code == 400
    assert "page_size" in past.json()["error"]["fields"]
    assert api.get(URL, {"page_size": "zero"}).status_code == 400


def test_message_page_size_limit(api, tenant, settings):
    settings.CONVO_MAX_PAGE_SIZE = 2
    conv = ConversationFactory(tenant=tenant)
    for _ in range(3):
        MessageFactory(conversation=conv)
    assert len(api.get(f"{URL}/{conv.pk}/messages", {"page_size": 2}).json()["results"]) == 2
    assert api.get(f"{URL}/{conv.pk}/messages", {"page_size": 3}).status_code == 400


def test_backpressure_answers_503_with_retry_after_at_the_bound(api, tenant, settings):
    settings.CONVO_MAX_PENDING_ITEMS = 3
    settings.CONVO_PENDING_COUNT_TTL_SECONDS = 0
    settings.CONVO_BACKPRESSURE_RETRY_AFTER_SECONDS = 7
    # Two pending items (a conversation and its message): below the bound, accepted.
    assert api.post(URL, {"user_id": "u1", "messages": [{"text": "a"}]}, format="json").status_code == 202
    # Four pending now: at or past the bound, every ingest path refuses.
    assert api.post(URL, {"user_id": "u2", "messages": [{"text": "b"}]}, format="json").status_code == 202
    for path, body in [
        (URL, {"user_id": "u3"}),
        (f"{URL}/batch", {"conversations": [{"user_id": "u4"}]}),
        ("/api/v1/messages", {"user_id": "u", "session_id": "s", "text": "c"}),
        ("/api/v1/messages/batch", {"messages": [{"user_id": "u", "session_id": "s", "text": "d"}]}),
    ]:
        response = api.post(path, body, format="json")
        assert response.status_code == 503, path
        assert response["Retry-After"] == "7"
        assert response.json()["error"]["code"] == "overloaded"
    assert Conversation.objects.count() == 2
    assert Message.objects.count() == 2

    Message.objects.update(embedding_state="done")
    Conversation.objects.update(embedding_state="done")
    assert api.post(URL, {"user_id": "u5"}, format="json").status_code == 202


def test_the_admission_count_is_exact_below_its_cap_and_stops_at_it(tenant):
    from conversations.services.admission import pending_work_count

    for _ in range(4):
        MessageFactory(conversation=ConversationFactory(tenant=tenant))
    pending = Conversation.objects.filter(embedding_state="pending").count()
    pending += Message.objects.filter(embedding_state="pending").count()
    assert pending == 8  # new rows wait for the worker

    assert pending_work_count() == 8
    assert pending_work_count(at_most=4) == 8  # exact below (and at) the cap
    assert pending_work_count(at_most=3) == 6  # each table stops at 3: enough to say "at the bound"
