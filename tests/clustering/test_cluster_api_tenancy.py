"""No tenant reaches another's clusters: every clusters endpoint that takes an id, in the path or
in the body, answers 404 for another tenant's id and changes nothing; lists, stats and the list
cache only ever hold the caller's own clusters."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from clustering.models import AnswerDelivery, Cluster, ClusterAction, ClusterMembership
from conversations.models import Tenant
from tests.clustering.conftest import Inbound, cluster_of

pytestmark = pytest.mark.django_db

CLUSTERS = "/api/v1/clusters"
QUESTION = "is the shop open on sunday?"


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    cache.clear()


@pytest.fixture
def theirs(other_tenant: Tenant, inbound: Inbound) -> dict[str, Any]:
    """Another tenant's cluster of two messages (and a cluster of their own for merges)."""
    first, second, lone = inbound(other_tenant, QUESTION, QUESTION.upper(), "where is my refund")
    return {"cluster": cluster_of(first), "messages": [first, second], "other": cluster_of(lone)}


@pytest.fixture
def mine(tenant: Tenant, inbound: Inbound) -> dict[str, Any]:
    first, second, lone = inbound(tenant, QUESTION, QUESTION.upper(), "where is my refund")
    return {"cluster": cluster_of(first), "messages": [first, second], "other": cluster_of(lone)}


def snapshot() -> list[tuple[Any, ...]]:
    """Every cluster's state and every membership, to prove nothing changed."""
    clusters = list(Cluster.objects.order_by("pk").values_list("pk", "label", "status", "size", "answer"))
    members = list(ClusterMembership.objects.order_by("pk").values_list("pk", "cluster_id", "method"))
    return [*clusters, *members, ClusterAction.objects.count(), AnswerDelivery.objects.count()]


def not_found(response: Any) -> dict[str, Any]:
    assert response.status_code == 404, response.content
    error = response.json()["error"]
    assert error["code"] == "not_found"
    return error


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("get", "", None),
        ("patch", "", {"label": "pwned"}),
        ("get", "/messages", None),
        ("get", "/actions", None),
        ("post", "/answer", {"answer": "pwned"}),
        ("post", "/remove-message", {"message_id": "{their_message}"}),
        ("post", "/merge", {"cluster_ids": ["{their_other}"]}),
        ("post", "/split", {"message_ids": ["{their_message}"]}),
        ("post", "/reopen", None),
        ("post", "/archive", None),
    ],
)
def test_another_tenants_cluster_is_not_found(
    api: APIClient, theirs: dict[str, Any], method: str, suffix: str, body: Any
) -> None:
    if body is not None:
        fill = {"{their_message}": str(theirs["messages"][0].pk), "{their_other}": str(theirs["other"].pk)}
        body = {k: ([fill.get(v[0], v[0])] if isinstance(v, list) else fill.get(v, v)) for k, v in body.items()}
    before = snapshot()

    response = getattr(api, method)(f"{CLUSTERS}/{theirs['cluster'].pk}{suffix}", body, format="json")

    not_found(response)
    assert snapshot() == before


def test_merging_another_tenants_cluster_into_mine_is_not_found(
    api: APIClient, mine: dict[str, Any], theirs: dict[str, Any]
) -> None:
    before = snapshot()
    response = api.post(
        f"{CLUSTERS}/{mine['cluster'].pk}/merge",
        {"cluster_ids": [str(mine["other"].pk), str(theirs["cluster"].pk)]},
        format="json",
    )
    error = not_found(response)
    assert str(theirs["cluster"].pk) in error["fields"]["cluster_ids"][0]
    assert str(mine["other"].pk) not in error["fields"]["cluster_ids"][0]
    assert snapshot() == before


@pytest.mark.parametrize(("action", "field"), [("split", "message_ids"), ("remove-message", "message_id")])
def test_moving_another_tenants_message_out_of_my_cluster_is_not_found(
    api: APIClient, mine: dict[str, Any], theirs: dict[str, Any], action: str, field: str
) -> None:
    their_message = str(theirs["messages"][0].pk)
    body = {field: [their_message] if field == "message_ids" else their_message}
    before = snapshot()

    error = not_found(api.post(f"{CLUSTERS}/{mine['cluster'].pk}/{action}", body, format="json"))

    assert field in error["fields"]
    assert snapshot() == before


def test_another_tenants_message_cluster_is_not_found(api: APIClient, theirs: dict[str, Any]) -> None:
    not_found(api.get(f"/api/v1/messages/{theirs['messages'][0].pk}/cluster"))


def test_a_deleted_conversations_message_is_not_found(
    api: APIClient, mine: dict[str, Any], django_capture_on_commit_callbacks
) -> None:
    message = mine["messages"][0]
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/api/v1/conversations/{message.conversation_id}").status_code == 204
    not_found(api.get(f"/api/v1/messages/{message.pk}/cluster"))
    assert not ClusterMembership.objects.filter(message=message).exists()
    not_found(api.post(f"{CLUSTERS}/{mine['cluster'].pk}/split", {"message_ids": [str(message.pk)]}, format="json"))


def test_lists_stats_and_the_list_cache_hold_only_my_clusters(
    api: APIClient, other_api: APIClient, mine: dict[str, Any], theirs: dict[str, Any]
) -> None:
    mine_ids = {str(mine["cluster"].pk), str(mine["other"].pk)}
    theirs_ids = {str(theirs["cluster"].pk), str(theirs["other"].pk)}
    for _ in range(2):  # the second round is served from the cache: each tenant its own pages
        for client, expected in ((api, mine_ids), (other_api, theirs_ids)):
            body = client.get(CLUSTERS).json()
            assert {row["id"] for row in body["results"]} == expected
            texts = {m["message_id"] for row in body["results"] for m in row["recent_messages"]}
            assert texts <= {
                str(pk) for pk in ClusterMembership.objects.filter(cluster_id__in=expected).values_list("pk", flat=True)
            }
    assert api.get(CLUSTERS)["X-Cache"] == "hit"

    stats = api.get(f"{CLUSTERS}/stats").json()
    assert stats["clusters"]["total"] == 2 and stats["messages_clustered"] == 3


def test_a_cursor_never_crosses_tenants(
    api: APIClient, other_api: APIClient, mine: dict[str, Any], theirs: dict[str, Any]
) -> None:
    # A cursor is only a position: replayed by another tenant, it pages through that tenant's rows.
    next_url = api.get(CLUSTERS, {"page_size": 1}).json()["next"]
    body = other_api.get(next_url).json()
    assert {row["id"] for row in body["results"]} <= {str(theirs["cluster"].pk), str(theirs["other"].pk)}
