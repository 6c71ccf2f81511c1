"""The clustering admin: moderators do every action from the admin through the moderation
services, a refused action is an error message that changes nothing, and no page can leave a
cluster's size or centroid wrong (both are checked against the members after every action)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from clustering import admin as clustering_admin
from clustering.models import (
    AnswerDelivery,
    Cluster,
    ClusterAction,
    ClusterActionKind,
    ClusteringPolicy,
    ClusterMembership,
    ClusterStatus,
    DeliveryEndpoint,
    DeliveryKind,
    DeliveryStatus,
    JoinMethod,
)
from clustering.services.moderation import SYSTEM, cluster_answer, cluster_archive, cluster_split
from conversations import admin as convo_admin
from conversations.models import Message, Tenant
from conversations.services.conversations import conversation_soft_delete
from tests.clustering.conftest import Inbound, cluster_of
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db

CLUSTERS = reverse("admin:clustering_cluster_changelist")
DELIVERIES = reverse("admin:clustering_answerdelivery_changelist")
ENDPOINTS = reverse("admin:clustering_deliveryendpoint_changelist")
AUDIT = reverse("admin:clustering_clusteraction_changelist")

SHOP = "is the shop open on sunday?"
PARCEL = "my parcel never arrived at the delivery address"
PLAN = "how much does the premium plan cost per month"


# --- helpers -----------------------------------------------------------------------------------------


def _change_url(obj: Any) -> str:
    return reverse(f"admin:clustering_{obj._meta.model_name}_change", args=[quote(obj.pk)])


def _moderation_url(cluster: Cluster, name: str) -> str:
    return reverse(f"admin:clustering_cluster_{name}", args=[quote(cluster.pk)])


def _fresh(cluster: Cluster) -> Cluster:
    return Cluster.objects.get(pk=cluster.pk)


def _members(cluster: Cluster) -> set[Any]:
    return set(ClusterMembership.objects.filter(cluster_id=cluster.pk).values_list("message_id", flat=True))


def _consistent(cluster: Cluster) -> bool:
    """``size`` is the member count and ``vector_sum`` the sum of the members' vectors (an empty
    cluster keeps its last sum: it is archived and never compared)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.size, (SELECT count(*) FROM clustering_clustermembership m WHERE m.cluster_id = c.id),
                   c.vector_sum <-> (SELECT sum(e.embedding) FROM clustering_clustermembership m
                                       JOIN conversations_messageembedding e
                                         ON e.item_id = m.message_id AND e.space_id = c.space_id
                                      WHERE m.cluster_id = c.id)
              FROM clustering_cluster c WHERE c.id = %s
            """,
            [cluster.pk],
        )
        size, members, distance = cursor.fetchone()
    return size == members and (members == 0 or float(distance) < 1e-4)


def _state(cluster: Cluster) -> tuple[Any, ...]:
    """Everything an action may change about a cluster, to show that a refused one changed nothing."""
    row = Cluster.objects.filter(pk=cluster.pk).values_list(
        "status", "size", "label", "answer", "answer_version", "merged_into_id", "representative_id"
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT vector_sum::text FROM clustering_cluster WHERE id = %s", [cluster.pk])
        vector = cursor.fetchone()[0]
    audit = ClusterAction.objects.filter(cluster_id=cluster.pk).count()
    deliveries = AnswerDelivery.objects.filter(cluster_id=cluster.pk).count()
    return (*row.get(), vector, frozenset(_members(cluster)), audit, deliveries)


def _flash(response: Any) -> list[tuple[str, str]]:
    """The messages the final page of a followed response showed: (level, text)."""
    return [(message.level_tag, str(message)) for message in response.context["messages"]]


def _spy(monkeypatch: pytest.MonkeyPatch, name: str) -> list[dict[str, Any]]:
    """Record the keyword arguments of each call to the service ``name`` the admin imported, and
    still call it."""
    calls: list[dict[str, Any]] = []
    real = getattr(clustering_admin, name)

    def spy(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(clustering_admin, name, spy)
    return calls


def _listed(client: Client, url: str) -> list[Any]:
    response = client.get(url)
    assert response.status_code == 200
    return [obj.pk for obj in response.context["cl"].result_list]


def _action(client: Client, action: str, clusters: list[Cluster], **extra: str) -> Any:
    return client.post(
        CLUSTERS,
        {"action": action, "index": "0", "_selected_action": [str(c.pk) for c in clusters], **extra},
        follow=True,
    )


@pytest.fixture
def shop(tenant: Tenant, inbound: Inbound) -> Cluster:
    """A cluster of three look-alike questions from three senders (exact duplicates, so they are
    one cluster whatever the embedder)."""
    messages = inbound(tenant, SHOP, "Is the shop open on Sunday", "is the SHOP open on sunday!!")
    for number, message in enumerate(messages):
        Message.objects.filter(pk=message.pk).update(
            sender_name=f"Sender {number}", sender_avatar_url=f"https://cdn.example.com/{number}.png?s=1&t=2"
        )
    cluster = cluster_of(messages[0])
    assert cluster.size == 3 and {cluster_of(m).pk for m in messages} == {cluster.pk}
    return cluster


def _ordered_members(cluster: Cluster) -> list[Any]:
    return list(
        ClusterMembership.objects.filter(cluster_id=cluster.pk)
        .order_by("-joined_at", "-message_id")
        .values_list("message_id", flat=True)
    )


# --- the cluster list ---------------------------------------------------------------------------------


def test_list_is_biggest_first_and_sortable_by_recency(admin_client: Client, tenant: Tenant, inbound: Inbound) -> None:
    (parcel,) = inbound(tenant, PARCEL)
    plan = inbound(tenant, PLAN, PLAN)
    shop = inbound(tenant, SHOP, SHOP, SHOP)
    biggest, middle, smallest = cluster_of(shop[0]), cluster_of(plan[0]), cluster_of(parcel)
    Cluster.objects.filter(pk=smallest.pk).update(last_message_at=biggest.last_message_at.replace(year=2100))

    assert _listed(admin_client, CLUSTERS) == [biggest.pk, middle.pk, smallest.pk]
    response = admin_client.get(CLUSTERS)
    recency = list(response.context["cl"].list_display).index("last_message_at")
    assert _listed(admin_client, f"{CLUSTERS}?o=-{recency}")[0] == smallest.pk
    page = response.content.decode()
    assert SHOP in page and PARCEL in page
    assert "about" not in page and "3 clusters" in page


def test_list_filters_by_tenant_and_status_and_searches_label_and_text(
    admin_client: Client, tenant: Tenant, other_tenant: Tenant, inbound: Inbound
) -> None:
    mine = cluster_of(inbound(tenant, SHOP)[0])
    archived = cluster_of(inbound(tenant, PARCEL)[0])
    cluster_archive(cluster=archived, actor=SYSTEM)
    theirs = cluster_of(inbound(other_tenant, SHOP)[0])
    Cluster.objects.filter(pk=theirs.pk).update(label="opening hours")

    assert set(_listed(admin_client, f"{CLUSTERS}?tenant__id__exact={tenant.pk}")) == {mine.pk, archived.pk}
    assert _listed(admin_client, f"{CLUSTERS}?status__exact=archived") == [archived.pk]
    assert _listed(admin_client, f"{CLUSTERS}?q=hours") == [theirs.pk]  # label
    assert _listed(admin_client, f"{CLUSTERS}?q=parcel") == [archived.pk]  # representative text
    assert _listed(admin_client, f"{CLUSTERS}?q={mine.pk}") == [mine.pk]


def test_list_costs_the_same_few_queries_for_more_clusters_and_never_loads_vectors(
    admin_client: Client, tenant: Tenant, inbound: Inbound
) -> None:
    def list_queries() -> list[str]:
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(CLUSTERS).status_code == 200
        return [query["sql"] for query in queries.captured_queries]

    inbound(tenant, SHOP, PARCEL)
    few = list_queries()
    inbound(TenantFactory(), SHOP, PARCEL, PLAN)
    inbound(tenant, PLAN, "where do I change my delivery address", "do you ship to canada")
    many = list_queries()

    assert len(many) == len(few) <= 8, many
    assert not any("vector_sum" in sql for sql in many)


def test_list_never_counts_the_whole_table(
    admin_client: Client, tenant: Tenant, inbound: Inbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(convo_admin.EstimatedCountPaginator, "exact_up_to", 2)
    inbound(tenant, SHOP, PARCEL, PLAN, "do you ship to canada")

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(CLUSTERS)

    counts = [query["sql"] for query in queries.captured_queries if "COUNT(" in query["sql"].upper()]
    assert counts and all("LIMIT 3" in sql for sql in counts), counts
    assert response.context["cl"].paginator.count_is_estimate
    assert f"about {response.context['cl'].result_count}" in response.content.decode()


# --- a cluster's page -----------------------------------------------------------------------------------


def test_change_page_shows_members_with_avatar_sender_and_controls(admin_client: Client, shop: Cluster) -> None:
    cluster_answer(cluster=shop, answer="Yes, 10 to 16.", actor=SYSTEM)

    response = admin_client.get(_change_url(shop))

    assert response.status_code == 200
    page = response.content.decode()
    for number in range(3):
        assert f'<img src="https://cdn.example.com/{number}.png?s=1&amp;t=2" alt="" width="24" height="24"' in page
        assert f"Sender {number}" in page
    for message_id in _members(shop):
        assert f'form="cluster-split-form" name="message_ids" value="{message_id}"' in page
        assert f'form="cluster-remove-form" name="message_id" value="{message_id}"' in page
    assert "Is the shop open on Sunday" in page
    assert JoinMethod.FOUNDER.label in page and JoinMethod.EXACT.label in page
    assert "pending (answer, answer v1)" in page  # each member's delivery
    # The moderation forms, the answer prefilled; the audit log below.
    assert re.search(r'<textarea id="cluster-answer" name="answer"[^>]*>Yes, 10 to 16.</textarea>', page)
    assert 'id="cluster-split-form"' in page and 'id="cluster-remove-form"' in page
    assert "answer_version: 0 → 1" in page and ">system<" in page
    assert "384 dimensions" in page and "vector sum" not in page.lower()


def test_avatars_are_only_http_urls(admin_client: Client, shop: Cluster) -> None:
    Message.objects.filter(pk__in=_members(shop)).update(sender_avatar_url="javascript:alert(1)")
    page = admin_client.get(_change_url(shop)).content.decode()
    assert "javascript:alert" not in page and "<img src=" not in page


def test_change_page_queries_do_not_grow_with_members(admin_client: Client, tenant: Tenant, inbound: Inbound) -> None:
    small = cluster_of(inbound(tenant, SHOP, SHOP)[0])
    big = cluster_of(inbound(tenant, PARCEL, PARCEL, PARCEL, PARCEL, PARCEL, PARCEL)[0])
    cluster_answer(cluster=small, answer="Yes.", actor=SYSTEM)
    cluster_answer(cluster=big, answer="We are on it.", actor=SYSTEM)

    counts = []
    for cluster in (small, big):
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(_change_url(cluster)).status_code == 200
        counts.append(len(queries.captured_queries))
        assert not any('vector_sum"' in q["sql"] and "vector_dims" not in q["sql"] for q in queries.captured_queries)
    assert counts[0] == counts[1] <= 15, counts


def test_members_inline_shows_only_the_newest(
    admin_client: Client, tenant: Tenant, inbound: Inbound, settings: Any
) -> None:
    settings.CLUSTER_DETAIL_MESSAGES = 3
    cluster = cluster_of(inbound(tenant, *[SHOP] * 5)[0])
    newest = _ordered_members(cluster)

    page = admin_client.get(_change_url(cluster)).content.decode()

    assert len(re.findall(r'<tr class="form-row[^"]*"\s+id="memberships-\d+"', page)) == 3
    shown = re.findall(r'name="message_ids" value="([0-9a-f-]+)"', page)
    assert shown == [str(m) for m in newest[:3]]
    assert "The newest 3 of the cluster's 5 member(s)" in page


def test_nothing_on_the_cluster_form_is_editable(admin_client: Client, shop: Cluster) -> None:
    before = _state(shop)
    page = admin_client.get(_change_url(shop)).content.decode()
    assert 'name="_save"' not in page and 'name="label"' in page  # the relabel form only
    assert 'name="size"' not in page and 'name="status"' not in page and 'name="memberships-0-similarity"' not in page

    response = admin_client.post(
        _change_url(shop),
        {
            "size": "99",
            "status": "archived",
            "label": "hijacked",
            "vector_sum": "[1,2,3]",
            "answer": "sneaked in",
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
            "_save": "Save",
        },
    )

    assert response.status_code == 403
    assert _state(shop) == before


def test_clusters_cannot_be_added_or_deleted(admin_client: Client, shop: Cluster) -> None:
    assert admin_client.get(reverse("admin:clustering_cluster_add")).status_code == 403
    assert admin_client.post(reverse("admin:clustering_cluster_add"), {"label": "new"}).status_code == 403
    delete_url = reverse("admin:clustering_cluster_delete", args=[quote(shop.pk)])
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403
    page = admin_client.get(CLUSTERS).content.decode()
    assert 'value="delete_selected"' not in page and 'value="archive_selected"' in page
    _action(admin_client, "delete_selected", [shop], post="yes")
    assert Cluster.objects.filter(pk=shop.pk).exists() and Cluster.objects.count() == 1


# --- the moderation buttons ----------------------------------------------------------------------------


def test_answer_goes_through_the_service(admin_client: Client, shop: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy(monkeypatch, "cluster_answer")

    response = admin_client.post(_moderation_url(shop, "answer"), {"answer": "  Yes, 10 to 16.  "}, follow=True)

    assert response.redirect_chain == [(_change_url(shop), 302)]
    assert _flash(response) == [("success", "Answered (answer version 1): every member gets this answer.")]
    assert len(calls) == 1 and calls[0]["cluster"].pk == shop.pk and calls[0]["answer"] == "  Yes, 10 to 16.  "
    assert calls[0]["actor"].label == "user:admin" and calls[0]["actor"].user.pk
    cluster = _fresh(shop)
    assert (cluster.status, cluster.answer, cluster.answer_version) == (ClusterStatus.ANSWERED, "Yes, 10 to 16.", 1)
    assert set(AnswerDelivery.objects.filter(cluster=shop).values_list("message_id", flat=True)) == _members(shop)
    assert ClusterAction.objects.get(cluster=shop).actor == "user:admin"
    # Re-answering: the form is prefilled, and a new version supersedes the old deliveries.
    assert ">Yes, 10 to 16.</textarea>" in response.content.decode()
    admin_client.post(_moderation_url(shop, "answer"), {"answer": "Yes, 10 to 18."})
    assert _fresh(shop).answer_version == 2
    assert AnswerDelivery.objects.filter(cluster=shop, answer_version=2, status=DeliveryStatus.PENDING).count() == 3
    assert _consistent(shop)


@pytest.mark.parametrize(
    ("view", "data", "error"),
    [
        ("answer", {"answer": "   "}, "An answer is required. This field may not be blank."),
        ("answer", {}, "An answer is required."),
        ("relabel", {"label": " "}, "Invalid label. Must be 1 to 200 characters."),
        ("remove_message", {"message_id": "not-an-id"}, "Choose a message to remove."),
        ("split", {}, "Nothing to split. Choose at least one message."),
        ("split", {"message_ids": ["nope"]}, "Not message ids."),
    ],
)
def test_invalid_requests_show_an_error_and_change_nothing(
    admin_client: Client, shop: Cluster, view: str, data: dict[str, Any], error: str
) -> None:
    before = _state(shop)

    response = admin_client.post(_moderation_url(shop, view), data, follow=True)

    assert response.status_code == 200
    assert response.redirect_chain == [(_change_url(shop), 302)]
    [(level, text)] = _flash(response)
    assert level == "error" and text.startswith(error)
    assert _state(shop) == before


def test_answer_too_long_is_an_error(admin_client: Client, shop: Cluster, settings: Any) -> None:
    settings.CLUSTER_MAX_ANSWER_CHARS = 10
    before = _state(shop)
    response = admin_client.post(_moderation_url(shop, "answer"), {"answer": "x" * 11}, follow=True)
    assert _flash(response)[0][0] == "error" and "too long" in _flash(response)[0][1]
    assert _state(shop) == before


def test_answering_an_archived_cluster_is_a_conflict_message(admin_client: Client, shop: Cluster) -> None:
    cluster_archive(cluster=shop, actor=SYSTEM)
    before = _state(shop)

    response = admin_client.post(_moderation_url(shop, "answer"), {"answer": "Yes."}, follow=True)

    assert response.status_code == 200
    assert _flash(response) == [("error", "An archived cluster cannot be answered: reopen it first.")]
    assert _state(shop) == before


def test_relabel_reopen_and_archive_go_through_the_services(
    admin_client: Client, shop: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {name: _spy(monkeypatch, name) for name in ("cluster_relabel", "cluster_archive", "cluster_reopen")}

    admin_client.post(_moderation_url(shop, "relabel"), {"label": "  Sunday   opening "})
    assert _fresh(shop).label == "Sunday opening"
    page = admin_client.get(_change_url(shop)).content.decode()
    assert 'id="cluster-archive-form"' in page and 'id="cluster-reopen-form"' not in page

    response = admin_client.post(_moderation_url(shop, "archive"), follow=True)
    assert _fresh(shop).status == ClusterStatus.ARCHIVED
    assert _flash(response) == [("success", "Archived: the cluster takes no new members.")]
    page = response.content.decode()
    assert 'id="cluster-archive-form"' not in page and 'id="cluster-reopen-form"' in page

    admin_client.post(_moderation_url(shop, "reopen"))
    assert _fresh(shop).status == ClusterStatus.OPEN

    assert [len(calls[name]) for name in ("cluster_relabel", "cluster_archive", "cluster_reopen")] == [1, 1, 1]
    kinds = list(ClusterAction.objects.filter(cluster=shop).order_by("id").values_list("action", flat=True))
    assert kinds == [ClusterActionKind.RELABEL, ClusterActionKind.ARCHIVE, ClusterActionKind.REOPEN]
    assert _fresh(shop).size == 3 and _consistent(shop)


def test_reopening_a_merged_cluster_is_refused(admin_client: Client, tenant: Tenant, inbound: Inbound) -> None:
    target, source = cluster_of(inbound(tenant, SHOP)[0]), cluster_of(inbound(tenant, PARCEL)[0])
    _action(admin_client, "merge_selected", [target, source], post="yes", target=str(target.pk))
    before = _state(source)

    response = admin_client.post(_moderation_url(source, "reopen"), follow=True)

    assert _flash(response) == [("error", "This cluster was merged into another; reopen that one instead.")]
    assert _state(source) == before


def test_remove_rehomes_the_message_and_keeps_both_clusters_right(
    admin_client: Client, shop: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy(monkeypatch, "cluster_remove_message")
    leaving = _ordered_members(shop)[0]

    response = admin_client.post(_moderation_url(shop, "remove_message"), {"message_id": str(leaving)}, follow=True)

    assert [call["message_id"] for call in calls] == [leaving]
    home = cluster_of(Message.objects.get(pk=leaving))
    assert home.pk != shop.pk and home.size == 1 and _members(home) == {leaving}
    assert _fresh(shop).size == 2 and leaving not in _members(shop)
    assert _consistent(shop) and _consistent(home)
    [(level, text)] = _flash(response)
    assert level == "success" and f'href="{_change_url(home)}"' in text and "(now 1 members)" in text
    assert f'<a href="{_change_url(home)}">' in response.content.decode()  # a link, not escaped text
    assert ClusterAction.objects.get(cluster=shop).action == ClusterActionKind.REMOVE_MESSAGE


def test_remove_rehomes_into_the_most_similar_cluster(admin_client: Client, tenant: Tenant, inbound: Inbound) -> None:
    # Two clusters of near questions, kept apart at ingest by a strict threshold, then a lenient one.
    # (Few messages: the tenant is in the warm-up regime, decided by the warm-up threshold.)
    policy = ClusteringPolicy.objects.create(
        tenant=tenant, warmup_similarity_threshold=0.999, text_similarity_threshold=100
    )
    per_month = inbound(tenant, PLAN, PLAN)
    each_month = inbound(tenant, "how much does the premium plan cost each month")
    source, other = cluster_of(per_month[0]), cluster_of(each_month[0])
    assert source != other
    policy.warmup_similarity_threshold = 0.3
    policy.save()

    admin_client.post(_moderation_url(source, "remove_message"), {"message_id": str(per_month[1].pk)})

    assert cluster_of(per_month[1]) == other
    assert (_fresh(source).size, _fresh(other).size) == (1, 2)
    assert _consistent(source) and _consistent(other)


def test_removing_a_message_of_another_cluster_is_refused(
    admin_client: Client, shop: Cluster, tenant: Tenant, inbound: Inbound
) -> None:
    (stranger,) = inbound(tenant, PARCEL)
    before = _state(shop)

    response = admin_client.post(_moderation_url(shop, "remove_message"), {"message_id": str(stranger.pk)}, follow=True)

    assert _flash(response) == [("error", "Not a member. This message is not in this cluster.")]
    assert _state(shop) == before and cluster_of(stranger) != shop


def test_split_moves_the_ticked_messages_into_a_new_cluster(
    admin_client: Client, tenant: Tenant, inbound: Inbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy(monkeypatch, "cluster_split")
    cluster = cluster_of(inbound(tenant, *[SHOP] * 4)[0])
    ticked = _ordered_members(cluster)[:2]

    response = admin_client.post(
        _moderation_url(cluster, "split"), {"message_ids": [str(m) for m in ticked], "label": "Sunday"}, follow=True
    )

    assert [call["message_ids"] for call in calls] == [ticked] and calls[0]["label"] == "Sunday"
    split_off = cluster_of(Message.objects.get(pk=ticked[0]))
    assert split_off.pk != cluster.pk and split_off.label == "Sunday" and split_off.status == ClusterStatus.OPEN
    assert _members(split_off) == set(ticked) and split_off.size == 2
    assert _fresh(cluster).size == 2 and not (_members(cluster) & set(ticked))
    assert _consistent(cluster) and _consistent(split_off)
    [(level, text)] = _flash(response)
    assert level == "success" and text.startswith("Split 2 message(s) off into")


def test_splitting_every_member_is_refused(admin_client: Client, shop: Cluster) -> None:
    before = _state(shop)

    response = admin_client.post(
        _moderation_url(shop, "split"), {"message_ids": [str(m) for m in _members(shop)]}, follow=True
    )

    [(level, text)] = _flash(response)
    assert level == "error" and text.startswith("A split must leave members behind.")
    assert _state(shop) == before and Cluster.objects.count() == 1


def test_moderation_views_take_only_csrf_protected_posts(admin_user: User, shop: Cluster) -> None:
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(admin_user)
    before = _state(shop)

    assert strict.get(_moderation_url(shop, "archive")).status_code == 405
    assert strict.post(_moderation_url(shop, "archive")).status_code == 403  # no CSRF token
    page = strict.get(_change_url(shop)).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token is not None
    assert strict.post(_moderation_url(shop, "archive"), {"csrfmiddlewaretoken": token[1]}).status_code == 302

    assert before[0] == ClusterStatus.OPEN and _fresh(shop).status == ClusterStatus.ARCHIVED


def test_unknown_cluster_is_a_message_not_an_error(admin_client: Client, db: Any) -> None:
    url = reverse("admin:clustering_cluster_archive", args=["0190aaaa-0000-7000-8000-000000000000"])
    response = admin_client.post(url, follow=True)
    assert response.status_code == 200
    assert _flash(response) == [("warning", "That cluster does not exist.")]


def test_viewers_see_clusters_but_cannot_moderate(client: Client, django_user_model: Any, shop: Cluster) -> None:
    viewer = django_user_model.objects.create_user(username="viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_cluster"))
    client.force_login(viewer)
    before = _state(shop)

    page = client.get(_change_url(shop)).content.decode()
    assert "Sender 0" in page
    assert 'id="cluster-moderation"' not in page and "cluster-split-form" not in page and "remove (re-home)" not in page
    assert 'value="archive_selected"' not in client.get(CLUSTERS).content.decode()
    for view in ("answer", "archive", "split"):
        assert client.post(_moderation_url(shop, view), {"answer": "x"}).status_code == 403
    client.post(CLUSTERS, {"action": "archive_selected", "index": "0", "_selected_action": [str(shop.pk)]})
    assert _state(shop) == before


def test_soft_deleting_a_conversation_in_the_admin_keeps_its_cluster_right(admin_client: Client, shop: Cluster) -> None:
    leaving = Message.objects.get(pk=_ordered_members(shop)[0])

    admin_client.post(
        reverse("admin:conversations_conversation_changelist"),
        {"action": "soft_delete_selected", "index": "0", "_selected_action": [str(leaving.conversation_id)]},
    )

    assert not ClusterMembership.objects.filter(message=leaving).exists()
    assert _fresh(shop).size == 2 and _consistent(shop)


# --- change-list actions ----------------------------------------------------------------------------------


def test_archive_and_reopen_selected_go_through_the_services(
    admin_client: Client, tenant: Tenant, inbound: Inbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive_calls = _spy(monkeypatch, "cluster_archive")
    chosen = [cluster_of(inbound(tenant, text)[0]) for text in (SHOP, PARCEL)]
    kept = cluster_of(inbound(tenant, PLAN)[0])

    response = _action(admin_client, "archive_selected", chosen)

    assert _flash(response) == [("success", "Archived 2 cluster(s).")]
    assert sorted(call["cluster"].pk for call in archive_calls) == sorted(c.pk for c in chosen)
    assert {_fresh(c).status for c in chosen} == {ClusterStatus.ARCHIVED}
    assert _fresh(kept).status == ClusterStatus.OPEN

    response = _action(admin_client, "reopen_selected", [*chosen, kept])
    assert _flash(response) == [("success", "Reopened 2 cluster(s).")]  # kept was open already
    assert {_fresh(c).status for c in [*chosen, kept]} == {ClusterStatus.OPEN}
    assert all(_consistent(c) for c in [*chosen, kept])


def test_reopen_selected_reports_the_refused_and_does_the_rest(
    admin_client: Client, tenant: Tenant, inbound: Inbound
) -> None:
    target, merged, archived = (cluster_of(inbound(tenant, text)[0]) for text in (SHOP, PARCEL, PLAN))
    _action(admin_client, "merge_selected", [target, merged], post="yes", target=str(target.pk))
    cluster_archive(cluster=archived, actor=SYSTEM)
    merged_before = _state(merged)

    response = _action(admin_client, "reopen_selected", [merged, archived])

    (success, error) = _flash(response)
    assert success == ("success", "Reopened 1 cluster(s).")
    assert error[0] == "error" and "merged into another" in error[1]
    assert _fresh(archived).status == ClusterStatus.OPEN and _state(merged) == merged_before


def test_merge_asks_for_the_target_then_merges_through_the_service(
    admin_client: Client, tenant: Tenant, inbound: Inbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy(monkeypatch, "cluster_merge")
    biggest = cluster_of(inbound(tenant, *[SHOP] * 3)[0])
    middle = cluster_of(inbound(tenant, *[PARCEL] * 2)[0])
    smallest = cluster_of(inbound(tenant, PLAN)[0])
    cluster_answer(cluster=biggest, answer="Yes.", actor=SYSTEM)
    arrivals = _members(middle) | _members(smallest)
    everyone = _members(biggest) | arrivals

    confirm = _action(admin_client, "merge_selected", [smallest, middle, biggest])

    assert confirm.status_code == 200 and not calls
    page = confirm.content.decode()
    assert f'name="target" value="{biggest.pk}" id="merge-target-0" checked' in page
    assert page.count('name="target"') == 3 and 'name="post" value="yes"' in page

    response = _action(admin_client, "merge_selected", [smallest, middle, biggest], post="yes", target=str(biggest.pk))

    assert len(calls) == 1 and calls[0]["target"].pk == biggest.pk
    assert sorted(c.pk for c in calls[0]["sources"]) == sorted([middle.pk, smallest.pk])
    merged = _fresh(biggest)
    assert merged.size == 6 and _members(merged) == everyone and _consistent(merged)
    for source in (middle, smallest):
        gone = _fresh(source)
        assert (gone.status, gone.size, gone.merged_into_id) == (ClusterStatus.ARCHIVED, 0, biggest.pk)
        assert _consistent(gone)
    # The arrivals in the answered target get its answer.
    suggested = AnswerDelivery.objects.filter(cluster=biggest, kind=DeliveryKind.SUGGESTION)
    assert set(suggested.values_list("message_id", flat=True)) == arrivals
    [(level, text)] = _flash(response)
    assert level == "success" and text.startswith("Merged 2 cluster(s) into") and "(now 6 members)" in text


def test_merge_into_a_smaller_cluster_when_chosen(admin_client: Client, tenant: Tenant, inbound: Inbound) -> None:
    big = cluster_of(inbound(tenant, *[SHOP] * 2)[0])
    small = cluster_of(inbound(tenant, PARCEL)[0])

    _action(admin_client, "merge_selected", [big, small], post="yes", target=str(small.pk))

    assert _fresh(small).size == 3 and _fresh(big).merged_into_id == small.pk
    assert _consistent(small) and _consistent(big)


def test_merge_across_tenants_is_refused_and_changes_nothing(
    admin_client: Client, tenant: Tenant, other_tenant: Tenant, inbound: Inbound
) -> None:
    mine = cluster_of(inbound(tenant, SHOP, SHOP)[0])
    theirs = cluster_of(inbound(other_tenant, SHOP)[0])
    before = (_state(mine), _state(theirs))

    asked = _action(admin_client, "merge_selected", [mine, theirs])
    assert _flash(asked) == [("error", "Clusters of different tenants cannot be merged.")]

    # A crafted confirmation reaches the service, which refuses it too.
    forced = _action(admin_client, "merge_selected", [mine, theirs], post="yes", target=str(mine.pk))
    [(level, text)] = _flash(forced)
    assert level == "error" and text.startswith("These clusters cannot be merged.")
    assert (_state(mine), _state(theirs)) == before


@pytest.mark.parametrize("how", ["one", "no-target", "archived-target"])
def test_bad_merges_show_an_error_and_change_nothing(
    admin_client: Client, tenant: Tenant, inbound: Inbound, how: str
) -> None:
    first = cluster_of(inbound(tenant, SHOP, SHOP)[0])
    second = cluster_of(inbound(tenant, PARCEL)[0])
    if how == "archived-target":
        cluster_archive(cluster=second, actor=SYSTEM)
    before = (_state(first), _state(second))

    if how == "one":
        response = _action(admin_client, "merge_selected", [first])
        expected = "Choose at least two clusters to merge."
    elif how == "no-target":
        response = _action(admin_client, "merge_selected", [first, second], post="yes", target="nope")
        expected = "Choose the cluster to merge into."
    else:
        response = _action(admin_client, "merge_selected", [first, second], post="yes", target=str(second.pk))
        expected = "The target cluster is archived: reopen it first."

    assert _flash(response) == [("error", expected)]
    assert (_state(first), _state(second)) == before


# --- the audit log, deliveries, endpoints and policies -------------------------------------------------------


def test_audit_log_is_read_only(admin_client: Client, shop: Cluster) -> None:
    admin_client.post(_moderation_url(shop, "answer"), {"answer": "Yes."})
    action = ClusterAction.objects.get(cluster=shop)

    page = admin_client.get(f"{AUDIT}?cluster__id__exact={shop.pk}").content.decode()
    assert "user:admin" in page and "status: open → answered" in page
    assert admin_client.get(_change_url(action)).status_code == 200
    assert admin_client.post(_change_url(action), {"actor": "someone"}).status_code == 403
    assert admin_client.get(reverse("admin:clustering_clusteraction_add")).status_code == 403
    delete_url = reverse("admin:clustering_clusteraction_delete", args=[action.pk])
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403
    assert ClusterAction.objects.get(pk=action.pk).actor == "user:admin"


def test_deliveries_list_filters_and_is_read_only(
    admin_client: Client, shop: Cluster, other_tenant: Tenant, inbound: Inbound
) -> None:
    cluster_answer(cluster=shop, answer="Yes.", actor=SYSTEM)
    theirs = cluster_of(inbound(other_tenant, PARCEL)[0])
    cluster_answer(cluster=theirs, answer="On its way.", actor=SYSTEM)
    failed = AnswerDelivery.objects.filter(cluster=shop).first()
    assert failed is not None
    AnswerDelivery.objects.filter(pk=failed.pk).update(status=DeliveryStatus.FAILED, last_error="HTTP 500")

    assert len(_listed(admin_client, DELIVERIES)) == 4
    assert len(_listed(admin_client, f"{DELIVERIES}?tenant__id__exact={shop.tenant_id}")) == 3
    assert _listed(admin_client, f"{DELIVERIES}?status__exact=failed") == [failed.pk]
    assert len(_listed(admin_client, f"{DELIVERIES}?kind__exact=answer&cluster__id__exact={theirs.pk}")) == 1
    # The cluster page's links to its deliveries.
    links = re.findall(r'href="([^"]*answerdelivery[^"]*)"', admin_client.get(_change_url(shop)).content.decode())
    failed_link = next(link for link in links if "failed" in link).replace("&amp;", "&")
    assert _listed(admin_client, failed_link) == [failed.pk]
    assert "HTTP 500" in admin_client.get(DELIVERIES).content.decode()
    assert admin_client.post(_change_url(failed), {"status": "delivered"}).status_code == 403
    assert admin_client.get(reverse("admin:clustering_answerdelivery_add")).status_code == 403
    assert AnswerDelivery.objects.get(pk=failed.pk).status == DeliveryStatus.FAILED


def test_retry_selected_goes_through_the_service(
    admin_client: Client, shop: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy(monkeypatch, "delivery_retry")
    cluster_answer(cluster=shop, answer="Yes.", actor=SYSTEM)
    failed, pending, _ = AnswerDelivery.objects.filter(cluster=shop).order_by("id")
    AnswerDelivery.objects.filter(pk=failed.pk).update(status=DeliveryStatus.FAILED, attempts=8, last_error="HTTP 500")

    response = admin_client.post(
        DELIVERIES,
        {"action": "retry_selected", "index": "0", "_selected_action": [str(failed.pk), str(pending.pk)]},
        follow=True,
    )

    assert sorted(call["delivery"].pk for call in calls) == sorted([failed.pk, pending.pk])
    retried = AnswerDelivery.objects.get(pk=failed.pk)
    assert (retried.status, retried.attempts, retried.last_error) == (DeliveryStatus.PENDING, 0, "")
    (success, error) = _flash(response)
    assert success == ("success", "Queued 1 delivery(ies) to be sent again.")
    assert error[0] == "error" and "Only a failed delivery can be retried" in error[1]


def test_retry_selected_refuses_a_deleted_conversation_and_a_message_split_off(
    admin_client: Client, shop: Cluster
) -> None:
    cluster_answer(cluster=shop, answer="Yes.", actor=SYSTEM)
    deliveries = list(AnswerDelivery.objects.filter(cluster=shop).order_by("id"))
    AnswerDelivery.objects.filter(cluster=shop).update(status=DeliveryStatus.FAILED, attempts=8, last_error="HTTP 500")
    deleted, split_off, kept = deliveries
    conversation_soft_delete(conversation=Message.objects.get(pk=deleted.message_id).conversation)
    cluster_split(cluster=shop, message_ids=[split_off.message_id], actor=SYSTEM)

    response = admin_client.post(
        DELIVERIES,
        {"action": "retry_selected", "index": "0", "_selected_action": [str(d.pk) for d in deliveries]},
        follow=True,
    )

    (success, error) = _flash(response)
    assert success == ("success", "Queued 1 delivery(ies) to be sent again.")
    assert error[0] == "error"
    assert f"{deleted.pk}: The message's conversation has been deleted" in error[1]
    assert f"{split_off.pk}: The message is no longer in this delivery's cluster" in error[1]
    statuses = dict(AnswerDelivery.objects.filter(cluster=shop).values_list("pk", "status"))
    assert statuses == {deleted.pk: "failed", split_off.pk: "failed", kept.pk: "pending"}


def test_endpoint_secret_is_made_by_the_service_and_shown_once(
    admin_client: Client, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy(monkeypatch, "delivery_endpoint_set")

    response = admin_client.post(
        reverse("admin:clustering_deliveryendpoint_add"),
        {"tenant": tenant.pk, "url": "https://bot.example.com/hook", "is_active": "on"},
        follow=True,
    )

    assert response.status_code == 200
    assert calls == [{"tenant": tenant, "url": "https://bot.example.com/hook", "is_active": True}]
    endpoint = DeliveryEndpoint.objects.get(tenant=tenant)
    assert endpoint.secret and f"is {endpoint.secret} —" in response.content.decode()
    assert endpoint.secret not in admin_client.get(ENDPOINTS).content.decode()
    change_page = admin_client.get(_change_url(endpoint)).content.decode()
    assert endpoint.secret not in change_page and f"…{endpoint.secret[-4:]}" in change_page

    # Changing the URL keeps the secret; rotating makes a new one, shown once.
    admin_client.post(_change_url(endpoint), {"url": "https://bot.example.com/v2", "is_active": "on"})
    changed = DeliveryEndpoint.objects.get(pk=endpoint.pk)
    assert (changed.url, changed.secret) == ("https://bot.example.com/v2", endpoint.secret)
    rotated = admin_client.post(
        ENDPOINTS, {"action": "rotate_secret", "index": "0", "_selected_action": [endpoint.pk]}, follow=True
    )
    new_secret = DeliveryEndpoint.objects.get(pk=endpoint.pk).secret
    assert new_secret != endpoint.secret and f"is {new_secret} —" in rotated.content.decode()
    delete_url = reverse("admin:clustering_deliveryendpoint_delete", args=[endpoint.pk])
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403


@pytest.mark.parametrize("url", ["ftp://bot.example.com/hook", "not a url", "javascript:alert(1)"])
def test_endpoint_url_must_be_http(admin_client: Client, tenant: Tenant, url: str) -> None:
    response = admin_client.post(
        reverse("admin:clustering_deliveryendpoint_add"), {"tenant": tenant.pk, "url": url, "is_active": "on"}
    )
    assert response.status_code == 200 and "url" in response.context["adminform"].form.errors
    assert not DeliveryEndpoint.objects.exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("similarity_threshold", "1.5"),
        ("similarity_threshold", "-0.1"),
        ("similarity_threshold", "nan"),
        ("text_similarity_threshold", "101"),
        ("text_similarity_threshold", "-1"),
        ("short_message_chars", "-3"),
    ],
)
def test_policy_thresholds_are_validated(admin_client: Client, tenant: Tenant, field: str, value: str) -> None:
    response = admin_client.post(reverse("admin:clustering_clusteringpolicy_add"), {"tenant": tenant.pk, field: value})
    assert response.status_code == 200 and field in response.context["adminform"].form.errors
    assert not ClusteringPolicy.objects.exists()


def test_policy_is_saved_and_used(admin_client: Client, tenant: Tenant, inbound: Inbound) -> None:
    response = admin_client.post(
        reverse("admin:clustering_clusteringpolicy_add"),
        {
            "tenant": tenant.pk,
            "similarity_threshold": "1",
            "warmup_similarity_threshold": "1",
            "text_similarity_threshold": "100",
            "short_message_chars": "0",
        },
    )
    assert response.status_code == 302
    policy = ClusteringPolicy.objects.get(tenant=tenant)
    saved = (
        policy.similarity_threshold,
        policy.warmup_similarity_threshold,
        policy.text_similarity_threshold,
        policy.short_message_chars,
    )
    assert saved == (1, 1, 100, 0)
    first, second = inbound(tenant, PLAN, "how much does the premium plan cost each month")
    assert cluster_of(first) != cluster_of(second)
