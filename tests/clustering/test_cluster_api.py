"""The clusters API, end to end: real database, clusters made by the real embedding worker
(``inbound``), moderator actions through HTTP. Tenancy is proven in test_cluster_api_tenancy.py.

Mutations run inside ``django_capture_on_commit_callbacks(execute=True)``: the test's transaction
never commits, and the cache invalidation (like the deliveries' kick) is an on-commit hook.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from clustering.models import (
    AnswerDelivery,
    Cluster,
    ClusterAction,
    ClusterMembership,
    ClusterStatus,
    DeliveryKind,
    JoinMethod,
)
from conversations.models import Message, Tenant, TenantAPIKey
from conversations.services.embedding import embedding_drain
from tests.clustering.conftest import Inbound, cluster_of
from tests.clustering.test_assignment import _sum_matches_members

pytestmark = pytest.mark.django_db

CLUSTERS = "/api/v1/clusters"
PLAN = "how much does the premium plan cost per month"
PLAN_TOO = "how much does the premium plan cost each month"
PARCEL = "my parcel never arrived at the delivery address"
PARCEL_TOO = "my parcel has never arrived at the delivery address"
SHOP = "is the shop open on sunday?"


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


_rng = random.Random(7)


def gibberish() -> str:
    """A text that looks like no other (random 8-letter words): it starts a cluster of its own."""
    return " ".join("".join(_rng.choice(string.ascii_lowercase) for _ in range(8)) for _ in range(4))


def sized(tenant: Tenant, inbound: Inbound, sizes: list[int]) -> list[Cluster]:
    """One cluster per size, each of that many copies of its own text, in this order."""
    texts = [gibberish() for _ in sizes]
    made = inbound(tenant, *[text for text, size in zip(texts, sizes, strict=True) for _ in range(size)])
    firsts = [made[sum(sizes[:i])] for i in range(len(sizes))]
    clusters = [cluster_of(m) for m in firsts]
    assert [c.size for c in clusters] == sizes
    return clusters


def inbound_at(tenant: Tenant, inbound: Inbound, text: str, at: Any) -> Message:
    (message,) = inbound(tenant, text, drain=False)
    Message.objects.filter(pk=message.pk).update(sent_at=at)
    embedding_drain(seconds=30)
    return message


def ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["results"]]


def s(cluster: Cluster) -> str:
    return str(cluster.pk)


def fresh(cluster: Cluster) -> Cluster:
    return Cluster.objects.get(pk=cluster.pk)


def consistent(cluster: Cluster) -> bool:
    """Size is the member count and the vector sum is the sum of the members' vectors."""
    cluster = fresh(cluster)
    members = ClusterMembership.objects.filter(cluster=cluster).count()
    return cluster.size == members and (members == 0 or _sum_matches_members(cluster))


def errors(response: Any) -> dict[str, list[str]]:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"].get("fields", {})


@pytest.fixture
def mutate(django_capture_on_commit_callbacks: Any) -> Callable[..., Any]:
    """``mutate(api.post, url, body)``: one request whose on-commit hooks run (as in production)."""

    def call(method: Callable[..., Any], url: str, body: Any = None) -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            return method(url, body, format="json")

    return call


# --- list ------------------------------------------------------------------------------------------


def test_list_orders_by_size_both_ways(api: APIClient, tenant: Tenant, inbound: Inbound) -> None:
    one, three, two = sized(tenant, inbound, [1, 3, 2])

    assert ids(api.get(CLUSTERS)) == [s(three), s(two), s(one)]
    assert ids(api.get(CLUSTERS, {"ordering": "-size"})) == [s(three), s(two), s(one)]
    assert ids(api.get(CLUSTERS, {"ordering": "size"})) == [s(one), s(two), s(three)]
    row = api.get(CLUSTERS).json()["results"][0]
    assert row["size"] == 3 and row["status"] == "open"
    assert len(row["recent_messages"]) == 3 and {m["text"] for m in row["recent_messages"]} == {three.label}


def test_list_preview_holds_the_newest_few_members(api: APIClient, tenant: Tenant, inbound: Inbound, settings) -> None:
    settings.CLUSTER_LIST_PREVIEW_MESSAGES = 2
    (big,) = sized(tenant, inbound, [5])
    newest = list(
        ClusterMembership.objects.filter(cluster=big).order_by("-joined_at", "-pk").values_list("pk", flat=True)[:2]
    )
    row = api.get(CLUSTERS).json()["results"][0]
    assert [m["message_id"] for m in row["recent_messages"]] == [str(pk) for pk in newest]


def test_list_orders_by_recency_with_emptied_clusters_last(
    api: APIClient, tenant: Tenant, inbound: Inbound, mutate
) -> None:
    now = timezone.now()
    oldest = cluster_of(inbound_at(tenant, inbound, gibberish(), now - timedelta(hours=3)))
    newest = cluster_of(inbound_at(tenant, inbound, gibberish(), now - timedelta(hours=1)))
    middle = cluster_of(inbound_at(tenant, inbound, gibberish(), now - timedelta(hours=2)))
    # Removing its only member re-homes it to a new cluster (founded now) and empties the old one.
    lonely = cluster_of(inbound_at(tenant, inbound, gibberish(), now - timedelta(hours=4)))
    (only,) = ClusterMembership.objects.filter(cluster=lonely).values_list("pk", flat=True)
    moved = mutate(api.post, f"{CLUSTERS}/{lonely.pk}/remove-message", {"message_id": str(only)}).json()
    rehomed = moved["cluster"]["id"]
    assert moved["source"]["size"] == 0 and moved["source"]["last_message_at"] is None

    recent = ids(api.get(CLUSTERS, {"ordering": "-last_message_at"}))
    assert recent == [s(newest), s(middle), s(oldest), rehomed, s(lonely)]
    assert ids(api.get(CLUSTERS, {"ordering": "last_message_at"})) == [
        rehomed,
        s(oldest),
        s(middle),
        s(newest),
        s(lonely),
    ]


def test_list_filters_by_status(api: APIClient, tenant: Tenant, inbound: Inbound, mutate) -> None:
    opened, answered, archived = sized(tenant, inbound, [1, 2, 3])
    mutate(api.post, f"{CLUSTERS}/{answered.pk}/answer", {"answer": "Ten euros."})
    mutate(api.post, f"{CLUSTERS}/{archived.pk}/archive")

    assert ids(api.get(CLUSTERS, {"status": "open"})) == [s(opened)]
    assert ids(api.get(CLUSTERS, {"status": "answered"})) == [s(answered)]
    assert ids(api.get(CLUSTERS, {"status": "archived"})) == [s(archived)]
    assert ids(api.get(CLUSTERS)) == [s(archived), s(answered), s(opened)]


@pytest.mark.parametrize("ordering", ["-size", "size", "-last_message_at", "last_message_at"])
def test_pages_walk_every_cluster_once_both_ways(
    api: APIClient, tenant: Tenant, inbound: Inbound, ordering: str
) -> None:
    # Mostly ties (size 1, one transaction's time): the keyset's last key (the id) must break them.
    sized(tenant, inbound, [1, 2, 1, 1, 2, 1, 1])
    everything = ids(api.get(CLUSTERS, {"ordering": ordering, "page_size": 50}))
    assert len(everything) == 7

    pages, url = [], f"{CLUSTERS}?ordering={ordering}&page_size=3"
    while url:
        body = api.get(url).json()
        pages.append([row["id"] for row in body["results"]])
        last, url = body, body["next"]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [pk for page in pages for pk in page] == everything
    assert "page_size=3" in last["previous"]

    back, url = [], last["previous"]
    while url:
        body = api.get(url).json()
        back.insert(0, [row["id"] for row in body["results"]])
        url = body["previous"]
    assert back == pages[:-1]


def test_list_runs_a_fixed_number_of_queries(api: APIClient, tenant: Tenant, inbound: Inbound, settings) -> None:
    """Two queries a page (clusters, then every cluster's newest members in one windowed query),
    for 10 clusters as for 100: no N+1."""
    settings.CLUSTER_LIST_CACHE_SECONDS = 0
    url = f"{CLUSTERS}?page_size=200"

    def counted() -> tuple[int, list[dict[str, Any]]]:
        with CaptureQueriesContext(connection) as queries:
            response = api.get(url)
        assert response.status_code == 200
        sql = [q["sql"] for q in queries.captured_queries if TenantAPIKey._meta.db_table not in q["sql"]]
        return len(sql), response.json()["results"]

    sized(tenant, inbound, [2, 1, 3, 1, 1, 2, 1, 1, 1, 1])
    api.get(url)  # the API key is verified once, then remembered
    ten, rows = counted()
    assert len(rows) == 10 and sum(len(r["recent_messages"]) for r in rows) == 14
    sized(tenant, inbound, [1, 2] * 45)
    hundred, rows = counted()
    assert len(rows) == 100
    assert ten == hundred == 2


# --- the cache -------------------------------------------------------------------------------------


def test_a_repeated_list_is_served_from_the_cache(api: APIClient, tenant: Tenant, inbound: Inbound) -> None:
    sized(tenant, inbound, [2, 1])
    first = api.get(CLUSTERS, {"status": "open"})
    assert first["X-Cache"] == "miss"
    with CaptureQueriesContext(connection) as queries:
        second = api.get(CLUSTERS, {"status": "open"})
    assert second["X-Cache"] == "hit"
    assert second.json() == first.json()
    assert not [q for q in queries.captured_queries if "clustering_" in q["sql"]]
    # Other parameters are another page.
    assert api.get(CLUSTERS, {"status": "open", "ordering": "size"})["X-Cache"] == "miss"
    assert api.get(CLUSTERS, {"status": "open", "page_size": 1})["X-Cache"] == "miss"


@pytest.fixture
def scene(tenant: Tenant, inbound: Inbound) -> dict[str, Any]:
    """A (3 copies), B (1), C (1), and an archived D: a stage for every mutation."""
    a, b, c, d = sized(tenant, inbound, [3, 1, 1, 1])
    Cluster.objects.filter(pk=d.pk).update(status=ClusterStatus.ARCHIVED)
    members = list(ClusterMembership.objects.filter(cluster=a).values_list("pk", flat=True))
    return {"a": a, "b": b, "c": c, "d": d, "members": [str(m) for m in members]}


def _row(body: dict[str, Any], cluster: Cluster) -> dict[str, Any]:
    return next(row for row in body["results"] if row["id"] == str(cluster.pk))


MUTATIONS: dict[str, tuple[Callable[..., Any], Callable[[dict[str, Any], dict[str, Any]], bool]]] = {
    "relabel": (
        lambda api, sc, mutate: mutate(api.patch, f"{CLUSTERS}/{sc['a'].pk}", {"label": "Sunday hours"}),
        lambda body, sc: _row(body, sc["a"])["label"] == "Sunday hours",
    ),
    "answer": (
        lambda api, sc, mutate: mutate(api.post, f"{CLUSTERS}/{sc['a'].pk}/answer", {"answer": "Closed."}),
        lambda body, sc: _row(body, sc["a"])["status"] == "answered",
    ),
    "remove-message": (
        lambda api, sc, mutate: mutate(
            api.post, f"{CLUSTERS}/{sc['a'].pk}/remove-message", {"message_id": sc["members"][0]}
        ),
        lambda body, sc: _row(body, sc["a"])["size"] == 2 and len(body["results"]) == 5,
    ),
    "merge": (
        lambda api, sc, mutate: mutate(api.post, f"{CLUSTERS}/{sc['a'].pk}/merge", {"cluster_ids": [str(sc["b"].pk)]}),
        lambda body, sc: _row(body, sc["a"])["size"] == 4 and _row(body, sc["b"])["status"] == "archived",
    ),
    "split": (
        lambda api, sc, mutate: mutate(api.post, f"{CLUSTERS}/{sc['a'].pk}/split", {"message_ids": sc["members"][:1]}),
        lambda body, sc: _row(body, sc["a"])["size"] == 2 and len(body["results"]) == 5,
    ),
    "reopen": (
        lambda api, sc, mutate: mutate(api.post, f"{CLUSTERS}/{sc['d'].pk}/reopen"),
        lambda body, sc: _row(body, sc["d"])["status"] == "open",
    ),
    "archive": (
        lambda api, sc, mutate: mutate(api.post, f"{CLUSTERS}/{sc['c'].pk}/archive"),
        lambda body, sc: _row(body, sc["c"])["status"] == "archived",
    ),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_every_mutation_drops_the_cached_lists(api: APIClient, scene: dict[str, Any], mutate, name: str) -> None:
    act, changed = MUTATIONS[name]
    before = api.get(CLUSTERS)
    assert api.get(CLUSTERS)["X-Cache"] == "hit"
    assert not changed(before.json(), scene)

    response = act(api, scene, mutate)
    assert response.status_code == 200, response.content

    after = api.get(CLUSTERS)
    assert after["X-Cache"] == "miss"
    assert changed(after.json(), scene)
    # Whatever moved, every cluster's size is its member count and its sum its members' vectors.
    clusters = Cluster.objects.filter(tenant=scene["a"].tenant_id)
    assert all(consistent(cluster) for cluster in clusters)
    assert ClusterAction.objects.filter(tenant_id=scene["a"].tenant_id).exists()


def test_a_message_joining_drops_the_cached_lists(
    api: APIClient, tenant: Tenant, inbound: Inbound, django_capture_on_commit_callbacks
) -> None:
    (shop,) = sized(tenant, inbound, [2])
    assert _row(api.get(CLUSTERS).json(), shop)["size"] == 2
    assert api.get(CLUSTERS)["X-Cache"] == "hit"
    with django_capture_on_commit_callbacks(execute=True):
        inbound(tenant, shop.label.upper())

    after = api.get(CLUSTERS)
    assert after["X-Cache"] == "miss"
    assert _row(after.json(), shop)["size"] == 3


# --- detail, members, audit log ------------------------------------------------------------------


def test_detail_shows_the_members_with_sender_conversation_and_delivery(
    api: APIClient, tenant: Tenant, inbound: Inbound, mutate
) -> None:
    messages = inbound(tenant, PLAN, PLAN_TOO, drain=False)
    Message.objects.filter(pk=messages[0].pk).update(
        sender_name="Ann", sender_avatar_url="https://cdn.example.com/ann.png"
    )
    embedding_drain(seconds=30)
    plan = cluster_of(messages[0])
    mutate(api.post, f"{CLUSTERS}/{plan.pk}/answer", {"answer": "Ten euros a month."})

    body = api.get(f"{CLUSTERS}/{plan.pk}").json()

    assert body["id"] == str(plan.pk) and body["size"] == 2 and body["status"] == "answered"
    assert body["answer"] == "Ten euros a month." and body["answer_version"] == 1
    assert body["answered_by"].startswith("api-key:") and body["messages_truncated"] is False
    by_id = {m["message_id"]: m for m in body["messages"]}
    ann = by_id[str(messages[0].pk)]
    assert ann["sender_name"] == "Ann" and ann["sender_avatar_url"] == "https://cdn.example.com/ann.png"
    assert ann["text"] == PLAN and ann["method"] == JoinMethod.FOUNDER and ann["similarity"] == 1.0
    assert ann["user_id"] == messages[0].conversation.external_user_id and ann["channel"] == "web"
    assert ann["conversation_id"] == str(messages[0].conversation_id) and ann["joined_at"]
    assert ann["delivery"]["kind"] == "answer" and ann["delivery"]["status"] == "pending"
    other = by_id[str(messages[1].pk)]
    assert other["method"] == JoinMethod.VECTOR and 0.62 <= other["similarity"] < 1.0


def test_detail_is_capped_and_a_fixed_number_of_queries(
    api: APIClient, tenant: Tenant, inbound: Inbound, settings, mutate
) -> None:
    settings.CLUSTER_DETAIL_MESSAGES = 4
    small, big = sized(tenant, inbound, [2, 9])
    mutate(api.post, f"{CLUSTERS}/{big.pk}/answer", {"answer": "Yes."})
    api.get(f"{CLUSTERS}/{small.pk}")

    counts = []
    for cluster in (small, big):
        with CaptureQueriesContext(connection) as queries:
            body = api.get(f"{CLUSTERS}/{cluster.pk}").json()
        counts.append(len(queries.captured_queries))
    assert len(body["messages"]) == 4 and body["messages_truncated"] is True and body["size"] == 9
    assert counts[0] == counts[1] == 2  # the cluster; its members with their latest deliveries


def test_members_are_paginated_newest_first(api: APIClient, tenant: Tenant, inbound: Inbound) -> None:
    (big,) = sized(tenant, inbound, [5])
    expected = [
        str(pk)
        for pk in ClusterMembership.objects.filter(cluster=big)
        .order_by("-joined_at", "-pk")
        .values_list("pk", flat=True)
    ]
    seen, url = [], f"{CLUSTERS}/{big.pk}/messages?page_size=2"
    while url:
        body = api.get(url).json()
        seen.extend(row["message_id"] for row in body["results"])
        url = body["next"]
    assert seen == expected
    assert all(row["text"] == big.label for row in api.get(f"{CLUSTERS}/{big.pk}/messages").json()["results"])


def test_the_audit_log_records_who_did_what_with_before_and_after(
    api: APIClient, tenant: Tenant, inbound: Inbound, mutate
) -> None:
    (shop,) = sized(tenant, inbound, [2])
    mutate(api.patch, f"{CLUSTERS}/{shop.pk}", {"label": "Opening hours"})
    mutate(api.post, f"{CLUSTERS}/{shop.pk}/answer", {"answer": "Closed on Sundays."})
    prefix = TenantAPIKey.objects.get(tenant=tenant).prefix

    body = api.get(f"{CLUSTERS}/{shop.pk}/actions").json()

    answer, relabel = body["results"]
    assert (answer["action"], relabel["action"]) == ("answer", "relabel")
    assert answer["actor"] == relabel["actor"] == f"api-key:{prefix}"
    assert relabel["before"]["label"] == shop.label and relabel["after"]["label"] == "Opening hours"
    assert answer["before"]["status"] == "open" and answer["after"]["status"] == "answered"
    assert answer["after"]["answer"] == "Closed on Sundays." and answer["after"]["deliveries"] == 2
    assert answer["cluster_id"] == str(shop.pk)
    assert ClusterAction.objects.filter(cluster=shop).count() == 2
    one = api.get(f"{CLUSTERS}/{shop.pk}/actions?page_size=1").json()
    assert [r["id"] for r in one["results"]] == [answer["id"]]
    assert [r["id"] for r in api.get(one["next"]).json()["results"]] == [relabel["id"]]


# --- actions -----------------------------------------------------------------------------------------


def test_answer_makes_one_delivery_per_member_and_look_alikes_get_it_as_a_suggestion(
    api: APIClient, tenant: Tenant, inbound: Inbound, mutate
) -> None:
    first, second = inbound(tenant, PLAN, PLAN.upper())
    plan = cluster_of(first)
    response = mutate(api.post, f"{CLUSTERS}/{plan.pk}/answer", {"answer": "  Ten euros a month.  "})

    assert response.status_code == 200
    assert response.json()["status"] == "answered" and response.json()["answer"] == "Ten euros a month."
    deliveries = AnswerDelivery.objects.filter(cluster=plan)
    assert sorted(d.message_id for d in deliveries) == sorted([first.pk, second.pk])
    assert {d.kind for d in deliveries} == {DeliveryKind.ANSWER}

    (late,) = inbound(tenant, PLAN_TOO)
    membership = ClusterMembership.objects.get(message=late)
    assert membership.cluster_id == plan.pk and membership.method == JoinMethod.VECTOR
    assert membership.answer_suggested is True
    assert consistent(plan) and fresh(plan).size == 3

    body = api.get(f"/api/v1/messages/{late.pk}/cluster").json()
    assert body["cluster"]["id"] == str(plan.pk) and body["cluster"]["status"] == "answered"
    assert body["answer_suggested"] is True and body["suggested_answer"] == "Ten euros a month."
    assert body["method"] == "vector" and body["embedding_state"] == "done"
    assert [(d["kind"], d["answer"], d["status"]) for d in body["deliveries"]] == [
        ("suggestion", "Ten euros a month.", "pending")
    ]
    founder = api.get(f"/api/v1/messages/{first.pk}/cluster").json()
    assert founder["answer_suggested"] is False and founder["suggested_answer"] is None
    assert [d["kind"] for d in founder["deliveries"]] == ["answer"]


def test_a_message_in_no_cluster_yet_has_a_null_cluster(api: APIClient, tenant: Tenant, inbound: Inbound) -> None:
    (pending,) = inbound(tenant, PLAN, drain=False)
    body = api.get(f"/api/v1/messages/{pending.pk}/cluster").json()
    assert body["cluster"] is None and body["embedding_state"] == "pending" and body["deliveries"] == []
    assert body["answer_suggested"] is False and body["method"] is None


def test_reanswering_supersedes_pending_deliveries(api: APIClient, tenant: Tenant, inbound: Inbound, mutate) -> None:
    (shop,) = sized(tenant, inbound, [2])
    mutate(api.post, f"{CLUSTERS}/{shop.pk}/answer", {"answer": "Closed."})
    body = mutate(api.post, f"{CLUSTERS}/{shop.pk}/answer", {"answer": "Open from noon."}).json()
    assert body["answer_version"] == 2 and body["answer"] == "Open from noon."
    assert AnswerDelivery.objects.filter(cluster=shop, answer_version=2, status="pending").count() == 2
    assert AnswerDelivery.objects.filter(cluster=shop, answer_version=1, status="pending").count() == 0


def test_remove_message_rehomes_it_to_the_next_best_cluster(
    api: APIClient, tenant: Tenant, inbound: Inbound, mutate
) -> None:
    plan, parcel, parcel_too = inbound(tenant, PLAN, PARCEL, PARCEL_TOO)
    home = cluster_of(parcel)
    assert cluster_of(parcel_too) == home
    # A moderator mistakenly moves one parcel question into the plan cluster…
    split = mutate(api.post, f"{CLUSTERS}/{home.pk}/split", {"message_ids": [str(parcel_too.pk)]}).json()
    mutate(api.post, f"{CLUSTERS}/{cluster_of(plan).pk}/merge", {"cluster_ids": [split["cluster"]["id"]]})
    assert cluster_of(parcel_too) == cluster_of(plan)

    # …and takes it out again: it goes back to the parcel cluster, the best match above the threshold.
    response = mutate(api.post, f"{CLUSTERS}/{cluster_of(plan).pk}/remove-message", {"message_id": str(parcel_too.pk)})

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["cluster"]["id"] == str(home.pk) and body["cluster"]["size"] == 2
    assert body["source"]["id"] == str(cluster_of(plan).pk) and body["source"]["size"] == 1
    membership = ClusterMembership.objects.get(message=parcel_too)
    assert membership.cluster_id == home.pk and membership.method == JoinMethod.MODERATOR
    assert 0.62 <= membership.similarity < 1.0
    assert consistent(home) and consistent(cluster_of(plan))


def test_remove_message_starts_a_new_cluster_when_none_is_close(
    api: APIClient, tenant: Tenant, inbound: Inbound, mutate
) -> None:
    first, second = inbound(tenant, PLAN, PLAN_TOO)
    plan = cluster_of(first)
    before = set(Cluster.objects.filter(tenant=tenant).values_list("pk", flat=True))

    body = mutate(api.post, f"{CLUSTERS}/{plan.pk}/remove-message", {"message_id": str(second.pk)}).json()

    new = Cluster.objects.get(pk=body["cluster"]["id"])
    assert new.pk not in before and new.status == ClusterStatus.OPEN
    assert body["cluster"]["size"] == 1 and body["cluster"]["representative_id"] == str(second.pk)
    assert body["source"]["size"] == 1 and body["source"]["status"] == "open"
    assert consistent(plan) and consistent(new)
    audit = ClusterAction.objects.get(cluster=plan, action="remove_message")
    assert audit.after["moved_to"] == str(new.pk) and audit.before["size"] == 2


def test_remove_message_of_a_non_member_is_a_400(api: APIClient, tenant: Tenant, inbound: Inbound) -> None:
    plan, parcel = inbound(tenant, PLAN, PARCEL)
    response = api.post(
        f"{CLUSTERS}/{cluster_of(plan).pk}/remove-message", {"message_id": str(parcel.pk)}, format="json"
    )
    assert response.status_code == 400 and "message_id" in errors(response)


def test_merge_moves_every_member_and_archives_the_sources(
    api: APIClient, tenant: Tenant, inbound: Inbound, mutate
) -> None:
    target, one, two = sized(tenant, inbound, [2, 3, 1])

    response = mutate(api.post, f"{CLUSTERS}/{target.pk}/merge", {"cluster_ids": [s(one), s(two), s(one)]})

    assert response.status_code == 200, response.content
    assert response.json()["id"] == s(target) and response.json()["size"] == 6
    assert consistent(target)
    for source in (one, two):
        source = fresh(source)
        assert (source.status, source.size, source.merged_into_id) == ("archived", 0, target.pk)
    assert ClusterMembership.objects.filter(cluster=target, method=JoinMethod.MODERATOR).count() == 4
    merge = ClusterAction.objects.get(cluster=target, action="merge")
    assert merge.before["target"]["size"] == 2 and merge.after["moved"] == 4
    assert sorted(merge.after["sources"]) == sorted([s(one), s(two)])


def test_merging_into_an_answered_cluster_suggests_its_answer(
    api: APIClient, tenant: Tenant, inbound: Inbound, mutate
) -> None:
    target, source = sized(tenant, inbound, [1, 2])
    mutate(api.post, f"{CLUSTERS}/{target.pk}/answer", {"answer": "See the FAQ."})
    mutate(api.post, f"{CLUSTERS}/{target.pk}/merge", {"cluster_ids": [s(source)]})
    moved = ClusterMembership.objects.filter(cluster=target, method=JoinMethod.MODERATOR)
    assert moved.count() == 2 and all(m.answer_suggested for m in moved)
    assert AnswerDelivery.objects.filter(cluster=target, kind=DeliveryKind.SUGGESTION).count() == 2


def test_merge_status_rules(api: APIClient, tenant: Tenant, inbound: Inbound, mutate) -> None:
    target, source, other = sized(tenant, inbound, [1, 1, 1])
    itself = api.post(f"{CLUSTERS}/{target.pk}/merge", {"cluster_ids": [s(target)]}, format="json")
    assert itself.status_code == 400 and "cluster_ids" in errors(itself)

    mutate(api.post, f"{CLUSTERS}/{target.pk}/merge", {"cluster_ids": [s(source)]})
    reopened = mutate(api.post, f"{CLUSTERS}/{source.pk}/reopen")
    assert reopened.status_code == 409 and reopened.json()["error"]["code"] == "conflict"

    mutate(api.post, f"{CLUSTERS}/{target.pk}/archive")
    into_archived = mutate(api.post, f"{CLUSTERS}/{target.pk}/merge", {"cluster_ids": [s(other)]})
    assert into_archived.status_code == 409
    assert fresh(other).size == 1 and fresh(other).status == "open"


def test_split_moves_the_chosen_members_into_a_new_cluster(
    api: APIClient, tenant: Tenant, inbound: Inbound, mutate
) -> None:
    (shop,) = sized(tenant, inbound, [4])
    members = [str(pk) for pk in ClusterMembership.objects.filter(cluster=shop).values_list("pk", flat=True)]
    label = "x" * 200

    response = mutate(api.post, f"{CLUSTERS}/{shop.pk}/split", {"message_ids": members[:3], "label": label})

    assert response.status_code == 200, response.content
    body = response.json()
    new = Cluster.objects.get(pk=body["cluster"]["id"])
    assert body["cluster"]["size"] == 3 and body["cluster"]["status"] == "open" and body["cluster"]["label"] == label
    assert body["source"]["id"] == s(shop) and body["source"]["size"] == 1
    assert sorted(
        str(pk) for pk in ClusterMembership.objects.filter(cluster=new).values_list("pk", flat=True)
    ) == sorted(members[:3])
    assert consistent(shop) and consistent(new)
    assert ClusterAction.objects.get(cluster=new, action="split").after["split_from"] == s(shop)

    everything = api.post(f"{CLUSTERS}/{new.pk}/split", {"message_ids": members[:3]}, format="json")
    assert everything.status_code == 400 and "message_ids" in errors(everything)
    stranger = api.post(f"{CLUSTERS}/{new.pk}/split", {"message_ids": [members[3]]}, format="json")
    assert stranger.status_code == 400 and "message_ids" in errors(stranger)


def test_archive_and_reopen_status_rules(api: APIClient, tenant: Tenant, inbound: Inbound, mutate) -> None:
    (first,) = inbound(tenant, PLAN)
    plan = cluster_of(first)

    archived = mutate(api.post, f"{CLUSTERS}/{plan.pk}/archive")
    assert archived.status_code == 200 and archived.json()["status"] == "archived"
    assert mutate(api.post, f"{CLUSTERS}/{plan.pk}/archive").json()["status"] == "archived"  # idempotent
    answered = mutate(api.post, f"{CLUSTERS}/{plan.pk}/answer", {"answer": "Ten euros."})
    assert answered.status_code == 409 and answered.json()["error"]["code"] == "conflict"
    # An archived cluster takes no new members: the look-alike starts its own.
    (late,) = inbound(tenant, PLAN_TOO)
    assert cluster_of(late) != plan and fresh(plan).size == 1

    reopened = mutate(api.post, f"{CLUSTERS}/{plan.pk}/reopen")
    assert reopened.status_code == 200 and reopened.json()["status"] == "open"
    assert mutate(api.post, f"{CLUSTERS}/{plan.pk}/reopen").json()["status"] == "open"  # idempotent
    answered = mutate(api.post, f"{CLUSTERS}/{plan.pk}/answer", {"answer": "Ten euros."})
    assert answered.json()["status"] == "answered"
    assert mutate(api.post, f"{CLUSTERS}/{plan.pk}/reopen").json()["answer"] == "Ten euros."  # kept
    kinds = list(ClusterAction.objects.filter(cluster=plan).order_by("id").values_list("action", flat=True))
    assert kinds == ["archive", "reopen", "answer", "reopen"]


def test_an_emptied_cluster_cannot_be_reopened(api: APIClient, tenant: Tenant, inbound: Inbound, mutate) -> None:
    (only,) = inbound(tenant, PLAN)
    plan = cluster_of(only)
    mutate(api.post, f"{CLUSTERS}/{plan.pk}/remove-message", {"message_id": str(only.pk)})
    assert fresh(plan).size == 0 and fresh(plan).status == "archived"
    response = mutate(api.post, f"{CLUSTERS}/{plan.pk}/reopen")
    assert response.status_code == 409 and fresh(plan).status == "archived"


def test_relabel(api: APIClient, tenant: Tenant, inbound: Inbound, mutate) -> None:
    (shop,) = sized(tenant, inbound, [1])
    response = mutate(api.patch, f"{CLUSTERS}/{shop.pk}", {"label": "  Opening   hours "})
    assert response.status_code == 200 and response.json()["label"] == "Opening hours"
    assert fresh(shop).label == "Opening hours"
    assert api.put(f"{CLUSTERS}/{shop.pk}", {"label": "x"}, format="json").status_code == 405


# --- stats -------------------------------------------------------------------------------------------


def test_stats_count_clusters_and_the_answer_reuse_hit_rate(
    api: APIClient, tenant: Tenant, inbound: Inbound, mutate
) -> None:
    (first,) = inbound(tenant, PLAN)
    plan = cluster_of(first)
    mutate(api.post, f"{CLUSTERS}/{plan.pk}/answer", {"answer": "Ten euros."})
    inbound(tenant, PLAN_TOO, PLAN.upper(), PARCEL)  # two hits (vector, exact) and one new cluster
    (archived,) = sized(tenant, inbound, [1])
    mutate(api.post, f"{CLUSTERS}/{archived.pk}/archive")

    body = api.get(f"{CLUSTERS}/stats", {"days": 7}).json()

    assert body["days"] == 7 and body["since"]
    assert body["clusters"] == {"open": 1, "answered": 1, "archived": 1, "total": 3}
    assert body["messages_clustered"] == 5
    assert body["new_clusters"] == 3
    assert body["answered_joins"] == 2
    assert body["hit_rate"] == 0.4
    assert api.get(f"{CLUSTERS}/stats").json()["days"] == 30


def test_stats_window_and_empty_tenant(api: APIClient, tenant: Tenant, inbound: Inbound) -> None:
    assert api.get(f"{CLUSTERS}/stats").json()["hit_rate"] is None
    (old,) = inbound(tenant, PLAN)
    ClusterMembership.objects.filter(message=old).update(joined_at=timezone.now() - timedelta(days=10))
    body = api.get(f"{CLUSTERS}/stats", {"days": 7}).json()
    assert body["messages_clustered"] == 0 and body["clusters"]["open"] == 1
    assert api.get(f"{CLUSTERS}/stats", {"days": 11}).json()["messages_clustered"] == 1


# --- errors and limits -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "suffix", "body", "field"),
    [
        ("get", "", {"status": "closed"}, "status"),
        ("get", "", {"status": ""}, "status"),
        ("get", "", {"ordering": "size; drop table"}, "ordering"),
        ("get", "", {"page_size": "0"}, "page_size"),
        ("get", "", {"page_size": "many"}, "page_size"),
        ("get", "", {"cursor": "not-a-cursor"}, "cursor"),
        ("get", "/stats", {"days": "0"}, "days"),
        ("get", "/stats", {"days": "3651"}, "days"),
        ("get", "/{id}/messages", {"page_size": "-1"}, "page_size"),
        ("get", "/{id}/actions", {"cursor": "e30"}, "cursor"),
        ("patch", "/{id}", {}, "label"),
        ("patch", "/{id}", {"label": "   "}, "label"),
        ("patch", "/{id}", {"label": "x" * 201}, "label"),
        ("patch", "/{id}", {"label": "ok", "status": "open"}, "status"),
        ("post", "/{id}/answer", {}, "answer"),
        ("post", "/{id}/answer", {"answer": " \n "}, "answer"),
        ("post", "/{id}/answer", {"answer": 42}, "answer"),
        ("post", "/{id}/answer", {"answer": "a\x00b"}, "answer"),
        ("post", "/{id}/answer", {"answer": "ok", "status": "answered"}, "status"),
        ("post", "/{id}/answer", ["not", "an", "object"], "body"),
        ("post", "/{id}/remove-message", {}, "message_id"),
        ("post", "/{id}/remove-message", {"message_id": "nope"}, "message_id"),
        ("post", "/{id}/merge", {"cluster_ids": []}, "cluster_ids"),
        ("post", "/{id}/merge", {"cluster_ids": "x"}, "cluster_ids"),
        ("post", "/{id}/merge", {"cluster_ids": ["x"]}, "cluster_ids.0"),
        ("post", "/{id}/split", {"message_ids": []}, "message_ids"),
        ("post", "/{id}/split", {"message_ids": ["{member}"], "label": "x" * 201}, "label"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    api: APIClient, tenant: Tenant, inbound: Inbound, method: str, suffix: str, body: Any, field: str
) -> None:
    (shop,) = sized(tenant, inbound, [2])
    member = str(ClusterMembership.objects.filter(cluster=shop).first().pk)
    url = CLUSTERS + suffix.format(id=shop.pk)
    if isinstance(body, dict) and body.get("message_ids") == ["{member}"]:
        body = {**body, "message_ids": [member]}
    response = api.get(url, body) if method == "get" else getattr(api, method)(url, body, format="json")

    assert response.status_code == 400, response.content
    assert field in errors(response), response.json()
    assert fresh(shop).size == 2 and fresh(shop).status == "open" and not ClusterAction.objects.exists()


def test_a_cursor_of_another_ordering_is_refused(api: APIClient, tenant: Tenant, inbound: Inbound) -> None:
    sized(tenant, inbound, [1, 1])
    cursor = api.get(CLUSTERS, {"page_size": 1}).json()["next"].split("cursor=")[1]
    response = api.get(CLUSTERS, {"ordering": "size", "cursor": cursor})
    assert response.status_code == 400 and "cursor" in errors(response)


def test_unknown_ids_in_the_path_are_json_404s(api: APIClient, tenant: Tenant) -> None:
    missing = "0190a0a0-0000-7000-8000-000000000000"
    for response in (
        api.get(f"{CLUSTERS}/{missing}"),
        api.post(f"{CLUSTERS}/{missing}/archive"),
        api.get(f"/api/v1/messages/{missing}/cluster"),
        api.get(f"{CLUSTERS}/not-a-uuid"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_answer_length_limit(api: APIClient, tenant: Tenant, inbound: Inbound, settings, mutate) -> None:
    settings.CLUSTER_MAX_ANSWER_CHARS = 20
    (shop,) = sized(tenant, inbound, [1])
    over = api.post(f"{CLUSTERS}/{shop.pk}/answer", {"answer": "y" * 21}, format="json")
    assert over.status_code == 400 and "answer" in errors(over)
    assert "at most 20" in errors(over)["answer"][0]
    assert mutate(api.post, f"{CLUSTERS}/{shop.pk}/answer", {"answer": "y" * 20}).status_code == 200


def test_split_size_limit(api: APIClient, tenant: Tenant, inbound: Inbound, settings, mutate) -> None:
    settings.CLUSTER_MAX_SPLIT_MESSAGES = 2
    (shop,) = sized(tenant, inbound, [4])
    members = [str(pk) for pk in ClusterMembership.objects.filter(cluster=shop).values_list("pk", flat=True)]
    over = api.post(f"{CLUSTERS}/{shop.pk}/split", {"message_ids": members[:3]}, format="json")
    assert over.status_code == 400 and "message_ids" in errors(over)
    assert fresh(shop).size == 4
    assert mutate(api.post, f"{CLUSTERS}/{shop.pk}/split", {"message_ids": members[:2]}).status_code == 200


def test_merge_size_limit(api: APIClient, tenant: Tenant, inbound: Inbound, settings, mutate) -> None:
    settings.CLUSTER_MAX_MERGE = 2
    target, *sources = sized(tenant, inbound, [1, 1, 1, 1])
    over = api.post(f"{CLUSTERS}/{target.pk}/merge", {"cluster_ids": [s(c) for c in sources]}, format="json")
    assert over.status_code == 400 and "cluster_ids" in errors(over)
    assert fresh(target).size == 1
    ok = mutate(api.post, f"{CLUSTERS}/{target.pk}/merge", {"cluster_ids": [s(c) for c in sources[:2]]})
    assert ok.status_code == 200 and ok.json()["size"] == 3


@pytest.mark.parametrize("suffix", ["", "/{id}/messages", "/{id}/actions"])
def test_page_size_limit(api: APIClient, tenant: Tenant, inbound: Inbound, settings, suffix: str) -> None:
    (shop,) = sized(tenant, inbound, [1])
    url = CLUSTERS + suffix.format(id=shop.pk)
    maximum = settings.CONVO_MAX_PAGE_SIZE
    assert api.get(url, {"page_size": maximum}).status_code == 200
    over = api.get(url, {"page_size": maximum + 1})
    assert over.status_code == 400 and "page_size" in errors(over)


# --- the documented shapes ---------------------------------------------------------------------------


def test_rows_have_exactly_the_documented_keys(api: APIClient, tenant: Tenant, inbound: Inbound, mutate) -> None:
    from clustering.api import serializers as out

    def keys(serializer: Any) -> set[str]:
        return set(serializer().fields)

    (shop,) = sized(tenant, inbound, [3])
    answered = mutate(api.post, f"{CLUSTERS}/{shop.pk}/answer", {"answer": "Closed."}).json()
    assert set(answered) == keys(out.ClusterSerializer)
    row = api.get(CLUSTERS).json()["results"][0]
    assert set(row) == keys(out.ClusterListItemSerializer)
    assert set(row["recent_messages"][0]) == keys(out.ClusterPreviewSerializer)
    detail = api.get(f"{CLUSTERS}/{shop.pk}").json()
    assert set(detail) == keys(out.ClusterDetailSerializer)
    assert set(detail["messages"][0]) == keys(out.ClusterMemberSerializer)
    assert set(detail["messages"][0]["delivery"]) == keys(out.ClusterMemberDeliverySerializer)
    member = detail["messages"][0]["message_id"]
    assert set(api.get(f"{CLUSTERS}/{shop.pk}/messages").json()["results"][0]) == keys(out.ClusterMemberSerializer)
    assert set(api.get(f"{CLUSTERS}/{shop.pk}/actions").json()["results"][0]) == keys(out.ClusterActionLogSerializer)
    moved = mutate(api.post, f"{CLUSTERS}/{shop.pk}/split", {"message_ids": [member]}).json()
    assert set(moved) == keys(out.ClusterMoveSerializer) and set(moved["source"]) == keys(out.ClusterSerializer)
    where = api.get(f"/api/v1/messages/{member}/cluster").json()
    assert set(where) == keys(out.MessageClusterSerializer)
    assert set(where["deliveries"][0]) == keys(out.MessageDeliverySerializer)
    assert set(api.get(f"{CLUSTERS}/stats").json()) == keys(out.ClusteringStatsSerializer)
    # Datetimes render alike whether a row or a serializer made them.
    assert row["created_at"].endswith("Z") and where["cluster"]["created_at"].endswith("Z")


def test_the_schema_documents_the_clusters_api(client) -> None:
    import yaml

    schema = yaml.safe_load(client.get("/api/schema/").content)
    paths = schema["paths"]
    for action in ("answer", "remove-message", "merge", "split", "reopen", "archive"):
        operation = paths[f"/api/v1/clusters/{{id}}/{action}"]["post"]
        assert "200" in operation["responses"] and "404" in operation["responses"]
    assert "ClusterMergeInRequest" in str(paths["/api/v1/clusters/{id}/merge"]["post"]["requestBody"])
    assert "ClusterMove" in str(paths["/api/v1/clusters/{id}/split"]["post"]["responses"]["200"])
    assert {p["name"] for p in paths["/api/v1/clusters"]["get"]["parameters"]} >= {"status", "ordering", "cursor"}
    assert "/api/v1/messages/{message_id}/cluster" in paths and "/api/v1/clusters/stats" in paths
