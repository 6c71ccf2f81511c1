"""POST /api/v1/search and /api/v1/context over messages embedded by the real worker path
(hashing embedder in tests: texts sharing words are close)."""

from __future__ import annotations

import pytest
from django.core.cache import cache

from conversations.services.embedding import embedding_drain
from conversations.services.embedding_spaces import embedding_spaces_forget
from tests.factories import ConversationFactory, MessageFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/search"


@pytest.fixture(autouse=True)
def _clean_state():
    cache.clear()
    embedding_spaces_forget()
    yield
    embedding_spaces_forget()


@pytest.fixture
def corpus(tenant, other_tenant):
    alice_web = ConversationFactory(tenant=tenant, external_user_id="alice", channel="web", summary="card top up")
    alice_sms = ConversationFactory(tenant=tenant, external_user_id="alice", channel="sms")
    bob = ConversationFactory(tenant=tenant, external_user_id="bob", channel="web")
    theirs = ConversationFactory(tenant=other_tenant, external_user_id="alice")
    made = {
        "topup": MessageFactory(conversation=alice_web, text="how do I top up my card"),
        "stolen": MessageFactory(conversation=alice_sms, text="my card was stolen yesterday"),
        "refund": MessageFactory(conversation=bob, text="I want a refund for my order"),
        "bot": MessageFactory(conversation=alice_web, text="you can top up in the app", role="assistant"),
        "theirs": MessageFactory(conversation=theirs, text="how do I top up my card"),
    }
    embedding_drain(seconds=30)
    return made


def ids(response):
    assert response.status_code == 200, response.json()
    return [row["message_id"] for row in response.json()["results"]]


def test_search_by_query_finds_the_closest_messages_of_the_tenant_only(api, corpus):
    body = {"query": "top up my card", "k": 3, "min_similarity": 0.0}
    response = api.post(URL, body, format="json")
    found = ids(response)
    assert found[0] == str(corpus["topup"].pk)
    assert str(corpus["theirs"].pk) not in found
    first = response.json()["results"][0]
    assert set(first) >= {"text", "role", "channel", "user_id", "similarity", "score", "conversation_id"}
    assert response.json()["strategy"] == "exact"


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"user_id": "bob"}, {"refund"}),
        ({"channel": "sms"}, {"stolen"}),
        ({"role": "assistant"}, {"bot"}),
        ({"user_id": "alice", "channel": "web", "role": "user"}, {"topup"}),
    ],
)
def test_search_filters(api, corpus, filters, expected):
    body = {"query": "card top up refund stolen app", "k": 10, "min_similarity": -1.0, "filters": filters}
    assert set(ids(api.post(URL, body, format="json"))) == {str(corpus[name].pk) for name in expected}


def test_soft_deleted_conversations_never_appear(api, corpus):
    api.delete(f"/api/v1/conversations/{corpus['stolen'].conversation_id}")
    body = {"query": "card stolen", "k": 10, "min_similarity": -1.0}
    assert str(corpus["stolen"].pk) not in ids(api.post(URL, body, format="json"))


def test_k_limit_and_bad_requests_name_the_field(api, corpus, settings):
    settings.SEARCH_MAX_K = 5
    assert api.post(URL, {"query": "card", "k": 5}, format="json").status_code == 200
    for body, field in [
        ({"query": "card", "k": 6}, "k"),
        ({"query": "card", "k": 0}, "k"),
        ({"vector": [0.1, 0.2]}, "vector"),
        ({"query": "card", "min_similarity": 2}, "min_similarity"),
        ({"query": "card", "filters": {"channel": "fax"}}, "filters.channel"),
        ({}, "body"),
        ({"query": "card", "vector": [0.1] * 384}, "body"),
        ({"vector": [0.0] * 384}, "vector"),
        ({"vector": [1e300] * 384}, "vector"),
        ({"query": "   "}, "query"),
        ({"vector": [0.1] * 384, "mode": "hybrid"}, "body"),
    ]:
        response = api.post(URL, body, format="json")
        assert response.status_code == 400, body
        assert field in response.json()["error"]["fields"], (body, response.json())


def test_search_by_vector(api, corpus):
    from conversations.embeddings import get_embedder

    vector = get_embedder().embed(["my card was stolen yesterday"])[0]
    assert ids(api.post(URL, {"vector": vector, "k": 1}, format="json")) == [str(corpus["stolen"].pk)]


def test_a_vector_query_is_answered_where_the_active_model_cannot_be_built(api, corpus, monkeypatch):
    """A client bringing its own vector needs no embedder: with the active space's model unusable
    in this process (its API key is missing), vector search still answers and text search says 503."""
    from conversations.embeddings import get_embedder
    from conversations.models import EmbeddingSpace

    vector = get_embedder().embed(["my card was stolen yesterday"])[0]
    space = EmbeddingSpace.objects.get(state="active")
    space.config = {
        "BACKEND": "conversations.embeddings.openai.OpenAIEmbedder",
        "MODEL": "text-embedding-3-small",
        "DIMENSIONS": space.dimensions,
        "OPTIONS": {"api_key_env": "CONVO_TEST_MISSING_KEY"},
    }
    space.save(update_fields=["config"])
    monkeypatch.delenv("CONVO_TEST_MISSING_KEY", raising=False)
    embedding_spaces_forget()

    assert ids(api.post(URL, {"vector": vector, "k": 1}, format="json")) == [str(corpus["stolen"].pk)]
    response = api.post(URL, {"query": "card stolen", "k": 1}, format="json")
    assert response.status_code == 503 and "cannot be used here" in response.json()["error"]["message"]


def test_text_and_hybrid_modes(api, corpus):
    words = ids(api.post(URL, {"query": "refund", "mode": "text", "k": 5}, format="json"))
    assert words == [str(corpus["refund"].pk)]
    hybrid = api.post(URL, {"query": "refund order", "mode": "hybrid", "k": 3}, format="json")
    assert ids(hybrid)[0] == str(corpus["refund"].pk)
    assert hybrid.json()["strategy"].startswith("hybrid")


def test_results_are_cached_until_the_users_data_changes(api, corpus, tenant, django_capture_on_commit_callbacks):
    body = {"query": "top up my card", "k": 5, "min_similarity": 0.0, "filters": {"user_id": "alice"}}
    first = api.post(URL, body, format="json").json()
    second = api.post(URL, body, format="json").json()
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["results"] == first["results"]

    new = MessageFactory(conversation=corpus["topup"].conversation, text="top up my card please")
    with django_capture_on_commit_callbacks(execute=True):
        embedding_drain(seconds=30)
    third = api.post(URL, body, format="json").json()
    assert third["cached"] is False
    assert str(new.pk) in [row["message_id"] for row in third["results"]]


def test_another_tenant_never_reads_a_cached_result(api, other_api, corpus):
    body = {"query": "how do I top up my card", "k": 5, "min_similarity": 0.0}
    mine = ids(api.post(URL, body, format="json"))
    theirs = ids(other_api.post(URL, body, format="json"))
    assert theirs == [str(corpus["theirs"].pk)]
    assert str(corpus["theirs"].pk) not in mine


def test_context_has_recent_then_relevant_without_duplicates_within_budget(api, corpus, tenant):
    conversation = corpus["topup"].conversation
    for i in range(3):
        MessageFactory(conversation=conversation, text=f"recent chatter number {i}")
    embedding_drain(seconds=30)
    response = api.post(
        "/api/v1/context", {"user_id": "alice", "query": "card stolen", "recent": 2, "k": 3}, format="json"
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    kinds = [item["kind"] for item in body["items"]]
    recent = [item["text"] for item in body["items"] if item["kind"] == "recent"]
    assert recent == ["recent chatter number 1", "recent chatter number 2"]
    relevant_ids = [item["id"] for item in body["items"] if item["kind"] == "relevant"]
    assert str(corpus["stolen"].pk) in relevant_ids
    assert len(relevant_ids) == len(set(relevant_ids))
    assert not set(relevant_ids) & {item["id"] for item in body["items"] if item["kind"] == "recent"}
    assert kinds.index("recent") > max(i for i, kind in enumerate(kinds) if kind != "recent")
    assert body["tokens"] <= body["budget"]
    assert "## Recent messages" in body["text"]
    assert str(corpus["theirs"].pk) not in relevant_ids


def test_context_respects_the_token_budget(api, corpus):
    # The newest message, "you can top up in the app", is 25 characters: 7 tokens; nothing else fits.
    body = api.post("/api/v1/context", {"user_id": "alice", "recent": 10, "token_budget": 8}, format="json").json()
    assert body["tokens"] == 7
    assert body["truncated"] is True
    assert [item["kind"] for item in body["items"]] == ["recent"]
    limit = api.post("/api/v1/context", {"user_id": "alice", "token_budget": 10**9}, format="json")
    assert limit.status_code == 400 and "token_budget" in limit.json()["error"]["fields"]


def test_deleting_or_moving_a_conversation_drops_cached_results(api, corpus, django_capture_on_commit_callbacks):
    body = {"query": "card stolen", "k": 5, "min_similarity": 0.0, "filters": {"user_id": "alice"}}
    assert str(corpus["stolen"].pk) in ids(api.post(URL, body, format="json"))
    conversation_id = corpus["stolen"].conversation_id
    with django_capture_on_commit_callbacks(execute=True):
        api.patch(f"/api/v1/conversations/{conversation_id}", {"user_id": "carol"}, format="json")
    response = api.post(URL, body, format="json")
    assert response.json()["cached"] is False
    assert str(corpus["stolen"].pk) not in ids(response)
