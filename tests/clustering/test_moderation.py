"""Moderation services keep every cluster's size, centroid, times and representative equal to what
its members say, and write an audit record of each action."""

from __future__ import annotations

import pytest
from django.db import connection

from clustering.models import AnswerDelivery, Cluster, ClusterAction, ClusterMembership, ClusterStatus
from clustering.services.moderation import (
    SYSTEM,
    Actor,
    cluster_answer,
    cluster_archive,
    cluster_merge,
    cluster_remove_message,
    cluster_reopen,
    cluster_split,
)
from conversations.services.conversations import conversation_soft_delete
from convo.errors import Conflict, ServiceError
from tests.clustering.conftest import Inbound, cluster_of

pytestmark = pytest.mark.django_db

PRICE = [
    "how much does the premium plan cost per month",
    "how much does the premium plan cost each month",
    "how much does the premium plan cost a month",
]
PARCEL = ["my parcel never arrived at the delivery address", "my parcel never arrived at my address"]


def consistent(cluster: Cluster) -> bool:
    """Size, vector sum and first/last times equal what the members say."""
    cluster.refresh_from_db()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT count(*), sum(e.embedding) <-> (SELECT vector_sum FROM clustering_cluster WHERE id = %s),
                   min(msg.created_at), max(msg.created_at)
              FROM clustering_clustermembership m
              JOIN conversations_messageembedding e ON e.item_id = m.message_id AND e.space_id = %s
              JOIN conversations_message msg ON msg.id = m.message_id
             WHERE m.cluster_id = %s
            """,
            [cluster.pk, cluster.space_id, cluster.pk],
        )
        count, gap, first, last = cursor.fetchone()
    if count != cluster.size:
        return False
    if count == 0:
        return True
    same_sum = gap < 1e-4
    member_ids = set(ClusterMembership.objects.filter(cluster=cluster).values_list("message_id", flat=True))
    return (
        same_sum
        and (first, last) == (cluster.first_message_at, cluster.last_message_at)
        and (cluster.representative_id in member_ids)
    )


@pytest.fixture
def two_clusters(tenant, inbound: Inbound):
    price = inbound(tenant, *PRICE)
    parcel = inbound(tenant, *PARCEL)
    assert len({cluster_of(m).pk for m in price}) == 1 and len({cluster_of(m).pk for m in parcel}) == 1
    return price, parcel


def test_answer_fans_out_and_is_audited(two_clusters) -> None:
    price, _ = two_clusters
    cluster = cluster_answer(cluster=cluster_of(price[0]), answer="  Ten euros a month. ", actor=Actor("user:mod"))
    assert (cluster.status, cluster.answer, cluster.answer_version) == (ClusterStatus.ANSWERED, "Ten euros a month.", 1)
    assert set(AnswerDelivery.objects.filter(cluster=cluster).values_list("message_id", flat=True)) == {
        m.pk for m in price
    }
    again = cluster_answer(cluster=cluster, answer="Twelve euros a month.", actor=Actor("user:mod"))
    assert again.answer_version == 2
    assert AnswerDelivery.objects.filter(cluster=cluster, answer_version=2, status="pending").count() == 3
    assert AnswerDelivery.objects.filter(cluster=cluster, answer_version=1, status="pending").count() == 0
    action = ClusterAction.objects.filter(cluster=cluster, action="answer").order_by("created_at").last()
    assert action.actor == "user:mod"
    assert action.before["answer"] == "Ten euros a month." and action.after["answer"] == "Twelve euros a month."


def test_a_blank_answer_is_refused_naming_the_field(two_clusters) -> None:
    price, _ = two_clusters
    with pytest.raises(ServiceError) as caught:
        cluster_answer(cluster=cluster_of(price[0]), answer="   ", actor=SYSTEM)
    assert "answer" in caught.value.fields


def test_remove_rehomes_to_the_next_best_cluster_or_a_new_one(two_clusters, tenant, inbound: Inbound) -> None:
    price, parcel = two_clusters
    source = cluster_of(price[0])
    home = cluster_remove_message(cluster=source, message_id=price[2].pk, actor=SYSTEM)
    # Its look-alikes are in the cluster it left: no other cluster passes the threshold, so a new one.
    assert home.pk not in {source.pk, cluster_of(parcel[0]).pk}
    assert home.size == 1 and home.representative_id == price[2].pk
    assert consistent(source) and consistent(home)
    moved = cluster_remove_message(cluster=home, message_id=price[2].pk, actor=SYSTEM)
    assert moved == source  # the next best cluster passes the threshold
    home.refresh_from_db()
    assert home.status == ClusterStatus.ARCHIVED and home.size == 0
    assert consistent(source)


def test_removing_the_representative_picks_another_member(two_clusters) -> None:
    price, _ = two_clusters
    source = cluster_of(price[0])
    assert source.representative_id == price[0].pk
    cluster_remove_message(cluster=source, message_id=price[0].pk, actor=SYSTEM)
    source.refresh_from_db()
    assert source.representative_id in {price[1].pk, price[2].pk}
    assert source.representative_text in PRICE[1:]
    assert consistent(source)


def test_merge_moves_members_archives_sources_and_suggests_the_answer(two_clusters) -> None:
    price, parcel = two_clusters
    target, source = cluster_of(price[0]), cluster_of(parcel[0])
    cluster_answer(cluster=target, answer="Ten euros.", actor=SYSTEM)
    merged = cluster_merge(target=target, sources=[source], actor=Actor("user:mod"))
    assert merged.size == 5 and consistent(merged)
    source.refresh_from_db()
    assert (source.status, source.size, source.merged_into_id) == (ClusterStatus.ARCHIVED, 0, target.pk)
    suggested = AnswerDelivery.objects.filter(cluster=target, message__in=parcel, kind="suggestion")
    assert suggested.count() == 2
    assert ClusterMembership.objects.filter(message__in=parcel, answer_suggested=True).count() == 2
    with pytest.raises(Conflict):
        cluster_reopen(cluster=source, actor=SYSTEM)


def test_split_makes_a_new_open_cluster_and_must_leave_members(two_clusters) -> None:
    price, _ = two_clusters
    source = cluster_of(price[0])
    split_off = cluster_split(cluster=source, message_ids=[price[1].pk, price[2].pk], actor=SYSTEM, label="monthly")
    assert (split_off.size, split_off.label, split_off.status) == (2, "monthly", ClusterStatus.OPEN)
    assert consistent(source) and consistent(split_off)
    with pytest.raises(ServiceError) as caught:
        cluster_split(cluster=source, message_ids=[price[0].pk], actor=SYSTEM)
    assert "message_ids" in caught.value.fields
    with pytest.raises(ServiceError):
        cluster_split(cluster=source, message_ids=[price[1].pk], actor=SYSTEM)  # not a member any more


def test_archived_clusters_take_no_members_until_reopened(two_clusters, tenant, inbound: Inbound) -> None:
    price, _ = two_clusters
    cluster = cluster_archive(cluster=cluster_of(price[0]), actor=SYSTEM)
    with pytest.raises(Conflict):
        cluster_answer(cluster=cluster, answer="x", actor=SYSTEM)
    (later,) = inbound(tenant, "how much does the premium plan cost every month")
    assert cluster_of(later) != cluster
    cluster_reopen(cluster=cluster, actor=SYSTEM)
    (again,) = inbound(tenant, "how much does the premium plan cost monthly")
    assert cluster_of(again) in {cluster, cluster_of(later)}


def test_a_deleted_conversation_leaves_its_clusters_and_gets_no_answer(two_clusters) -> None:
    price, _ = two_clusters
    cluster = cluster_answer(cluster=cluster_of(price[0]), answer="Ten euros.", actor=SYSTEM)
    conversation_soft_delete(conversation=price[1].conversation)
    assert not ClusterMembership.objects.filter(message=price[1]).exists()
    assert consistent(cluster) and cluster.size == 2
    assert AnswerDelivery.objects.get(message=price[1]).status == "failed"
    assert AnswerDelivery.objects.filter(message__in=[price[0], price[2]], status="pending").count() == 2


def test_a_message_that_leaves_a_cluster_does_not_get_its_answer(two_clusters) -> None:
    price, parcel = two_clusters
    cluster = cluster_answer(cluster=cluster_of(price[0]), answer="Ten euros.", actor=SYSTEM)
    home = cluster_remove_message(cluster=cluster, message_id=price[2].pk, actor=SYSTEM)
    left = AnswerDelivery.objects.get(message=price[2], cluster=cluster)
    assert (left.status, left.last_error) == ("failed", "the message left the cluster")
    assert AnswerDelivery.objects.filter(cluster=cluster, status="pending").count() == 2
    assert not AnswerDelivery.objects.filter(cluster=home).exists()

    # Merging an answered cluster into another answered one: the moved members get the target's
    # answer only.
    other = cluster_answer(cluster=cluster_of(parcel[0]), answer="It ships tomorrow.", actor=SYSTEM)
    cluster_merge(target=other, sources=[cluster], actor=SYSTEM)
    pending = AnswerDelivery.objects.filter(message__in=price[:2], status="pending")
    assert {d.answer for d in pending} == {"It ships tomorrow."} and pending.count() == 2


def test_deleted_text_does_not_stay_as_a_label_or_representative(tenant, inbound: Inbound) -> None:
    (alone,) = inbound(tenant, "please delete everything about my account number 1234")
    first, second = inbound(
        tenant, "how much does the premium plan cost per month", "how much does the premium plan cost each month"
    )
    lonely, shared = cluster_of(alone), cluster_of(first)
    assert shared.label == first.text and shared.representative_id == first.pk

    conversation_soft_delete(conversation=alone.conversation)
    conversation_soft_delete(conversation=first.conversation)

    lonely.refresh_from_db()
    assert (lonely.size, lonely.status, lonely.label, lonely.representative_text) == (0, "archived", "", "")
    assert lonely.representative_id is None
    shared.refresh_from_db()
    assert shared.representative_id == second.pk
    assert shared.label == shared.representative_text == second.text
    assert consistent(shared)


def test_a_moderators_label_survives_the_representative_leaving(two_clusters) -> None:
    from clustering.services.moderation import cluster_relabel

    price, _ = two_clusters
    cluster = cluster_relabel(cluster=cluster_of(price[0]), label="Pricing", actor=SYSTEM)
    conversation_soft_delete(conversation=price[0].conversation)
    cluster.refresh_from_db()
    assert cluster.label == "Pricing" and cluster.representative_id != price[0].pk


def test_recompute_counts_members_without_a_vector_in_the_space(two_clusters) -> None:
    from clustering.services.moderation import cluster_recompute
    from conversations.models import MessageEmbedding

    price, _ = two_clusters
    cluster = cluster_of(price[0])
    MessageEmbedding.objects.filter(item=price[2]).delete()  # as during a model switch's catch-up
    cluster_recompute(cluster_ids=[cluster.pk])
    cluster.refresh_from_db()
    assert cluster.size == 3  # every member
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.vector_sum <-> (SELECT sum(e.embedding) FROM conversations_messageembedding e
                                      WHERE e.item_id = ANY(%s))
              FROM clustering_cluster c WHERE c.id = %s
            """,
            [[price[0].pk, price[1].pk], cluster.pk],
        )
        assert cursor.fetchone()[0] < 1e-4  # the sum of the members that have a vector
