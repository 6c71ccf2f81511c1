"""End to end with the real bundled model (all-MiniLM-L6-v2): inbound messages through the ingest
API and the worker land in clusters of the same question; a moderator answers one; a later
paraphrase meets that answer as a suggestion, visible through the API."""

from __future__ import annotations

import pytest

from clustering.models import AnswerDelivery, Cluster
from conversations.models import EmbeddingSpace
from conversations.services.embedding import embedding_drain
from conversations.services.embedding_spaces import embedding_space_active_embedder, embedding_spaces_forget
from tests.embeddings.test_local import LOCAL

pytestmark = pytest.mark.django_db

CARD = ["My new card still hasn't arrived, where is it?", "I ordered a card two weeks ago and it is not here yet"]
REFUND = ["How do I get a refund for a purchase?", "I want my money back for something I bought"]


@pytest.fixture
def local_model(settings):
    # As deployed by default: the bundled model, run in a child process (EMBEDDINGS_PROCESS).
    settings.EMBEDDINGS = LOCAL
    settings.EMBEDDINGS_LOCAL_PROCESS = {"process": True, "timeout_seconds": 60.0}
    EmbeddingSpace.objects.filter(state="active").update(state="retired")  # the real model's space becomes active
    embedding_spaces_forget()
    yield
    embedding_spaces_forget()


def push(api, user: str, text: str) -> str:
    response = api.post("/api/v1/messages", {"user_id": user, "session_id": user, "text": text}, format="json")
    assert response.status_code == 202, response.json()
    return response.json()["id"]


def cluster_id(api, message_id: str) -> str:
    response = api.get(f"/api/v1/messages/{message_id}/cluster")
    assert response.status_code == 200, response.json()
    return response.json()["cluster"]["id"]


def test_paraphrases_cluster_and_meet_the_answer(api, local_model) -> None:
    ids = [push(api, f"user-{i}", text) for i, text in enumerate(CARD + REFUND)]
    embedding_drain(seconds=60)
    assert EmbeddingSpace.objects.get(state="active").model_id == "local:all-MiniLM-L6-v2"
    active = embedding_space_active_embedder()
    assert active is not None
    assert active[1].model_process is not None  # type: ignore[attr-defined]  (the deployed default: a child)

    card, refund = {cluster_id(api, m) for m in ids[:2]}, {cluster_id(api, m) for m in ids[2:]}
    assert len(card) == 1 and len(refund) == 1 and card != refund

    (card_cluster,) = card
    answer = {"answer": "Cards arrive within 7 days."}
    answered = api.post(f"/api/v1/clusters/{card_cluster}/answer", answer, format="json")
    assert answered.status_code == 200, answered.json()
    assert AnswerDelivery.objects.filter(cluster_id=card_cluster, kind="answer").count() == 2

    later = push(api, "user-9", "still waiting for my card to be delivered")
    embedding_drain(seconds=60)
    seen = api.get(f"/api/v1/messages/{later}/cluster").json()
    assert seen["cluster"]["id"] == card_cluster
    assert seen["answer_suggested"] is True and seen["suggested_answer"] == "Cards arrive within 7 days."
    assert [d["kind"] for d in seen["deliveries"]] == ["suggestion"]
    assert Cluster.objects.get(pk=card_cluster).size == 3
