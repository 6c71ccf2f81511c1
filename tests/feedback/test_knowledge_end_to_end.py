"""The whole learning loop against the real database and the real bundled model
(all-MiniLM-L6-v2): a conversation arrives through the API, the owner corrects the bot's answer,
a reviewer approves the correction, the worker embeds the new knowledge entry, and a paraphrase of
the original question (not the same text) gets the corrected answer from the answer lookup, while
an unrelated question gets no answer."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from conversations.services.embedding import embedding_drain
from feedback.models import KnowledgeEntry
from tests.clustering.test_end_to_end import local_model  # noqa: F401  (the fixture)

pytestmark = pytest.mark.django_db

API = "/api/v1"
ASKED = "How long does it take for a new card to be delivered?"
PARAPHRASE = "When will my new card arrive?"
WRONG = "Cards are delivered the same day."
CORRECTED = "New cards arrive within 5 working days of the order."


def test_a_corrected_answer_answers_a_paraphrase(api: APIClient, local_model: None) -> None:  # noqa: F811
    stored = api.post(
        f"{API}/conversations",
        {
            "user_id": "customer-1",
            "messages": [{"role": "user", "text": ASKED}, {"role": "assistant", "text": WRONG}],
        },
        format="json",
    )
    assert stored.status_code in (201, 202), stored.content
    conversation_id = stored.json()["id"]
    messages = api.get(f"{API}/conversations/{conversation_id}/messages").json()["results"]
    bot_answer = next(m["id"] for m in messages if m["role"] == "assistant")
    # Another piece of knowledge, so the lookup has to choose.
    other = {"question": "How do I change my PIN?", "answer": "Change it at any cash machine."}
    assert api.post(f"{API}/knowledge", other, format="json").status_code == 201

    corrected = api.post(
        f"{API}/corrections",
        {
            "conversation_id": conversation_id,
            "message_id": bot_answer,
            "corrected_text": CORRECTED,
            "corrected_by": "owner@example.com",
        },
        format="json",
    )
    assert corrected.status_code == 201, corrected.content
    item_id = corrected.json()["learning_item_id"]
    approved = api.post(f"{API}/learning-items/{item_id}/approve", {"note": "right"}, format="json").json()
    assert approved["status"] == "applied"
    entry = KnowledgeEntry.objects.get(pk=approved["entry_id"])
    assert (entry.question, entry.answer, entry.embedding_state) == (ASKED, CORRECTED, "pending")

    embedding_drain(seconds=120)
    entry.refresh_from_db()
    assert entry.embedding_state == "done"

    found = api.post(f"{API}/knowledge/lookup", {"question": PARAPHRASE}, format="json").json()
    assert found["decision"] == "answer", found
    assert found["answer"] == CORRECTED and found["entry"]["id"] == str(entry.pk)
    assert PARAPHRASE != ASKED and found["similarity"] < 0.99  # matched by meaning, not by text

    unrelated = api.post(f"{API}/knowledge/lookup", {"question": "Do you sell gift vouchers for spas?"}, format="json")
    assert unrelated.json()["decision"] != "answer"
