"""The knowledge API: entries (create, list, read, change, delete, history), search in its three
modes, and the answer lookup with its decision; bad input is a 400 naming the field; another
tenant's entry is a 404 everywhere and never found by search or lookup."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from conversations.models import Tenant
from conversations.services.embedding import embedding_drain
from feedback.models import KnowledgeEntry, KnowledgeLookupDay, LookupDecision
from feedback.retrieval import KnowledgeHit, Thresholds, answer_decide

pytestmark = pytest.mark.django_db

URL = "/api/v1/knowledge"
PASSWORD = {"question": "How do I reset my password?", "answer": "Use the reset link on the login page."}
HOURS = {"question": "When are you open on Sundays?", "answer": "We open at 10 on Sundays.", "tags": ["Hours"]}


def add(api: APIClient, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(URL, body, format="json")
    assert response.status_code == 201, response.content
    return dict(response.json())


def field_error(response: Any, field: str) -> None:
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"], response.json()


def test_create_list_read_and_history(api: APIClient) -> None:
    made = add(api, HOURS)
    assert (made["version"], made["source"], made["tags"], made["embedding_state"]) == (
        1,
        "manual",
        ["hours"],
        "pending",
    )
    assert made["updated_by"].startswith("api-key:")
    add(api, PASSWORD)
    listed = api.get(URL).json()["results"]
    assert [row["question"] for row in listed] == [PASSWORD["question"], HOURS["question"]]  # newest change first
    assert [row["id"] for row in api.get(URL, {"tag": "hours"}).json()["results"]] == [made["id"]]

    changed = api.patch(f"{URL}/{made['id']}", {"answer": "We open at 11 on Sundays."}, format="json")
    assert changed.status_code == 200 and changed.json()["version"] == 2
    versions = api.get(f"{URL}/{made['id']}/versions").json()
    assert [(v["version"], v["answer"]) for v in versions] == [(2, "We open at 11 on Sundays."), (1, HOURS["answer"])]
    assert api.get(f"{URL}/{made['id']}").json()["answer"] == "We open at 11 on Sundays."


def test_deactivated_entries_are_listed_by_filter_and_never_searched(api: APIClient) -> None:
    made = add(api, HOURS)
    embedding_drain(seconds=30)
    api.patch(f"{URL}/{made['id']}", {"active": False}, format="json")
    assert [row["id"] for row in api.get(URL, {"active": "false"}).json()["results"]] == [made["id"]]
    assert api.get(URL, {"active": "true"}).json()["results"] == []
    for mode in ("vector", "text", "hybrid"):
        found = api.post(f"{URL}/search", {"query": HOURS["question"], "mode": mode}, format="json")
        assert found.status_code == 200 and found.json()["results"] == [], mode
    assert api.post(f"{URL}/lookup", {"question": HOURS["question"]}, format="json").json()["decision"] == "no_match"


def test_delete(api: APIClient) -> None:
    made = add(api, HOURS)
    assert api.delete(f"{URL}/{made['id']}").status_code == 204
    assert not KnowledgeEntry.objects.exists()


def test_search_modes_find_the_right_entry(api: APIClient) -> None:
    hours, password = add(api, HOURS), add(api, PASSWORD)
    # Before the worker has run, words still find it; the vector side has nothing yet.
    assert (
        api.post(f"{URL}/search", {"query": "Sundays", "mode": "text"}, format="json").json()["results"][0]["entry"][
            "id"
        ]
        == hours["id"]
    )
    embedding_drain(seconds=30)
    for mode in ("vector", "hybrid"):
        body = api.post(f"{URL}/search", {"query": PASSWORD["question"], "mode": mode, "k": 1}, format="json").json()
        assert [hit["entry"]["id"] for hit in body["results"]] == [password["id"]], mode
        assert body["results"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    words = api.post(f"{URL}/search", {"query": "reset login", "mode": "text"}, format="json").json()
    assert [hit["entry"]["id"] for hit in words["results"]] == [password["id"]]
    assert words["results"][0]["similarity"] is None
    tagged = api.post(f"{URL}/search", {"query": PASSWORD["question"], "tags": ["hours"]}, format="json").json()
    assert {hit["entry"]["id"] for hit in tagged["results"]} == {hours["id"]}


def test_lookup_answers_the_same_question_and_counts_it(api: APIClient, tenant: Tenant) -> None:
    add(api, PASSWORD)
    embedding_drain(seconds=30)
    found = api.post(f"{URL}/lookup", {"question": PASSWORD["question"]}, format="json").json()
    assert found["decision"] == "answer" and found["answer"] == PASSWORD["answer"]
    assert found["similarity"] == pytest.approx(1.0, abs=1e-5) and found["agreement"] == pytest.approx(1.0)
    missed = api.post(f"{URL}/lookup", {"question": "zebra quantum marmalade"}, format="json").json()
    assert missed["decision"] == "no_match" and missed["answer"] is None and missed["entry"] is None
    row = KnowledgeLookupDay.objects.get(tenant=tenant)
    assert (row.answered, row.unmatched) == (1, 1)
    stats = api.get("/api/v1/feedback/stats").json()
    assert stats["lookups"]["hit_rate"] == 0.5 and stats["knowledge"] == {"entries": 1, "active": 1}


def hit(entry_id: int, answer: str, similarity: float) -> KnowledgeHit:
    return KnowledgeHit(KnowledgeEntry(question=f"q{entry_id}", answer=answer), similarity, similarity)


RULES = Thresholds(answer_similarity=0.6, answer_agreement=0.6, suggest_similarity=0.5, neighbours=5)


def test_the_vote_answers_only_when_near_and_agreed() -> None:
    agreed = answer_decide(candidates=[hit(1, "A", 0.8), hit(2, "A", 0.7), hit(3, "B", 0.65)], thresholds=RULES)
    assert (agreed.decision, agreed.entry.answer, round(agreed.agreement, 3)) == ("answer", "A", round(1.5 / 2.15, 3))
    split = answer_decide(candidates=[hit(1, "A", 0.8), hit(2, "B", 0.78), hit(3, "B", 0.3)], thresholds=RULES)
    assert split.decision == LookupDecision.SUGGEST  # B's 0.3 is below the vote floor: 0.8 vs 0.78
    far = answer_decide(candidates=[hit(1, "A", 0.55)], thresholds=RULES)
    assert (far.decision, far.similarity) == ("suggest", 0.55)
    # At the thresholds exactly: answered; just below: not.
    assert answer_decide(candidates=[hit(1, "A", 0.6)], thresholds=RULES).decision == "answer"
    assert answer_decide(candidates=[hit(1, "A", 0.5999)], thresholds=RULES).decision == "suggest"
    assert answer_decide(candidates=[hit(1, "A", 0.4999)], thresholds=RULES).decision == "no_match"
    # Two entries with the same answer (whitespace aside) vote together.
    together = answer_decide(candidates=[hit(1, "B", 0.9), hit(2, "A ", 0.85), hit(3, " A", 0.85)], thresholds=RULES)
    assert (together.decision, together.entry.answer, together.similarity) == ("answer", "A ", 0.85)


def test_bad_input_names_the_field(api: APIClient, settings: Any) -> None:
    settings.KNOWLEDGE_MAX_QUESTION_CHARS = 20
    settings.SEARCH_MAX_K = 3
    add(api, {"question": "q" * 20, "answer": "a"})
    field_error(api.post(URL, {"question": "q" * 21, "answer": "a"}, format="json"), "question")
    field_error(api.post(URL, {"question": "q", "answer": " "}, format="json"), "answer")
    field_error(api.post(URL, {"question": "q", "answer": "a", "tenant": 1}, format="json"), "tenant")
    field_error(api.post(URL, {"question": "q", "answer": "a", "tags": [""]}, format="json"), "tags.0")
    field_error(api.post(f"{URL}/search", {"query": "q", "k": 4}, format="json"), "k")
    assert api.post(f"{URL}/search", {"query": "q", "k": 3}, format="json").status_code == 200
    field_error(api.post(f"{URL}/lookup", {"question": ""}, format="json"), "question")
    field_error(api.get(URL, {"source": "nope"}), "source")


def test_a_taken_key_is_a_400_naming_key(api: APIClient) -> None:
    add(api, {**HOURS, "key": "sunday"})
    field_error(api.post(URL, {**PASSWORD, "key": "sunday"}, format="json"), "key")


def test_another_tenants_entry_is_a_404_and_never_found(api: APIClient, other_api: APIClient) -> None:
    theirs = add(other_api, PASSWORD)
    embedding_drain(seconds=30)
    path = f"{URL}/{theirs['id']}"
    for response in (
        api.get(path),
        api.patch(path, {"answer": "hijacked"}, format="json"),
        api.delete(path),
        api.get(f"{path}/versions"),
    ):
        assert response.status_code == 404, response.content
    assert KnowledgeEntry.objects.get().answer == PASSWORD["answer"]
    assert api.get(URL).json()["results"] == []
    for mode in ("vector", "text", "hybrid"):
        assert (
            api.post(f"{URL}/search", {"query": PASSWORD["question"], "mode": mode}, format="json").json()["results"]
            == []
        )
    assert api.post(f"{URL}/lookup", {"question": PASSWORD["question"]}, format="json").json()["decision"] == "no_match"


def test_a_tag_filter_with_a_nul_is_a_400_naming_it(api: APIClient) -> None:
    field_error(api.get(URL, {"tag": "ho\x00urs"}), "tag")
