"""Reads of clusters. Every function takes the tenant (or a cluster already fetched for it)
explicitly; nothing here can return another tenant's rows.

Each read is a fixed number of queries however many clusters or members it returns: related rows
come in the same query (joins, correlated subqueries on unique indexes) or in one more query for
a whole page, never per row. List and member reads return rows (dicts) rather than model
instances: building and serializing models cost ~5x the queries themselves for a page of 100.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.db import connections
from django.db.models import Count, F, JSONField, Model, OrderBy, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import JSONObject
from django.utils import timezone

from clustering.models import (
    AnswerDelivery,
    Cluster,
    ClusterAction,
    ClusterMembership,
    ClusterStatus,
    JoinMethod,
)
from conversations.models import Message, Tenant
from convo.db_router import read_alias_for

# The list orderings the API offers, each a keyset: the last key is unique, so a cursor (the keys
# of the last row of a page) names a position exactly, ties and all. They follow the (tenant,
# [status,] -size, id) and (tenant, [status,] -last_message_at, id) indexes. ``last_message_at``
# is null only for an emptied (archived) cluster; nulls sort last in both directions.
CLUSTER_ORDERINGS: dict[str, tuple[str, ...]] = {
    "-size": ("-size", "id"),
    "size": ("size", "-id"),
    "-last_message_at": ("-last_message_at", "id"),
    "last_message_at": ("last_message_at", "-id"),
}
# Members newest first; ``joined_at`` ties (one transaction) are broken by the message id (uuid7).
MEMBER_ORDERING: tuple[str, ...] = ("-joined_at", "-pk")
ACTION_ORDERING: tuple[str, ...] = ("-created_at", "-id")

# What a cluster row of the API holds (ClusterSerializer documents it); never the vector sum.
CLUSTER_FIELDS: tuple[str, ...] = (
    "id",
    "label",
    "status",
    "size",
    "representative_id",
    "representative_text",
    "answer",
    "answer_version",
    "answered_by",
    "answered_at",
    "merged_into_id",
    "first_message_at",
    "last_message_at",
    "created_at",
    "updated_at",
)
_DELIVERY_ORDERING = ("-created_at", "-answer_version", "-id")
_CLUSTERS = Cluster._meta.db_table
_MEMBERS = ClusterMembership._meta.db_table
_MESSAGES = Message._meta.db_table


def ordering_expressions(model: type[Model], keys: tuple[str, ...], *, reverse: bool = False) -> list[OrderBy]:
    """``order_by`` arguments for a keyset; nullable keys sort last (first when ``reverse``)."""
    expressions = []
    for key in keys:
        name = key.lstrip("-")
        descending = key.startswith("-") != reverse
        field = model._meta.pk if name == "pk" else model._meta.get_field(name)
        nulls = {"nulls_first": True} if reverse else {"nulls_last": True}
        expression = F(name).desc if descending else F(name).asc
        expressions.append(expression(**nulls) if getattr(field, "null", False) else expression())
    return expressions


def cluster_list(*, tenant: Tenant, status: str | None, ordering: str) -> QuerySet[Cluster, dict[str, Any]]:
    """The tenant's clusters (of one status, or all) in ``ordering`` (a key of
    ``CLUSTER_ORDERINGS``), as rows of ``CLUSTER_FIELDS``: one query per page. Their newest
    members come from ``cluster_previews``: one more query for the whole page."""
    queryset = Cluster.objects.filter(tenant=tenant)
    if status is not None:
        queryset = queryset.filter(status=status)
    return queryset.order_by(*ordering_expressions(Cluster, CLUSTER_ORDERINGS[ordering])).values(*CLUSTER_FIELDS)


def cluster_previews(*, tenant: Tenant, cluster_ids: list[UUID], limit: int) -> dict[UUID, list[dict[str, Any]]]:
    """The newest ``limit`` members of each of the tenant's clusters ``cluster_ids`` (message id,
    text, sender name, joined at), newest first, in one query.

    A LATERAL read of the (cluster, -joined_at) index: ``limit`` rows per cluster however big the
    cluster is. (A sliced ``Prefetch`` runs ROW_NUMBER() over every member of every cluster of the
    page, which grows with the clusters: a page holding a 10,000-member cluster reads 10,000 rows
    to show 3; docs/api.md has the measurements.)"""
    previews: dict[UUID, list[dict[str, Any]]] = {pk: [] for pk in cluster_ids}
    if not cluster_ids or limit <= 0:
        return previews
    with connections[read_alias_for(models=(Cluster, ClusterMembership, Message))].cursor() as cursor:
        cursor.execute(
            f"""
            SELECT m.cluster_id, m.message_id, msg.text, msg.sender_name, m.joined_at
              FROM {_CLUSTERS} AS c
             CROSS JOIN LATERAL (
                    SELECT cluster_id, message_id, joined_at FROM {_MEMBERS}
                     WHERE cluster_id = c.id
                     ORDER BY joined_at DESC, message_id DESC LIMIT %s
                   ) AS m
              JOIN {_MESSAGES} AS msg ON msg.id = m.message_id
             WHERE c.id = ANY(%s) AND c.tenant_id = %s
             ORDER BY m.joined_at DESC, m.message_id DESC
            """,
            [limit, list(cluster_ids), tenant.pk],
        )
        for cluster_id, message_id, text, sender_name, joined_at in cursor:
            previews[cluster_id].append(
                {"message_id": message_id, "text": text, "sender_name": sender_name, "joined_at": joined_at}
            )
    return previews


def cluster_members(*, cluster: Cluster) -> QuerySet[ClusterMembership, Any]:
    """The cluster's members newest first, as rows (ClusterMemberSerializer documents them): the
    membership, its message and conversation (user id, channel), and ``delivery``, the message's
    latest answer delivery of any cluster (id, cluster_id, kind, status, answer_version) or None.
    One query however many members are read (the delivery is a correlated subquery on the
    (message, cluster, answer_version) unique index)."""
    latest = (
        AnswerDelivery.objects.filter(message_id=OuterRef("message_id"))
        .order_by(*_DELIVERY_ORDERING)
        .values(
            json=JSONObject(
                id="id", cluster_id="cluster_id", kind="kind", status="status", answer_version="answer_version"
            )
        )[:1]
    )
    return (
        ClusterMembership.objects.filter(cluster=cluster, tenant_id=cluster.tenant_id)
        .order_by(*ordering_expressions(ClusterMembership, MEMBER_ORDERING))
        .values(
            "message_id",
            "similarity",
            "method",
            "answer_suggested",
            "joined_at",
            conversation_id=F("message__conversation_id"),
            user_id=F("message__conversation__external_user_id"),
            channel=F("message__conversation__channel"),
            sender_name=F("message__sender_name"),
            sender_avatar_url=F("message__sender_avatar_url"),
            text=F("message__text"),
            sent_at=F("message__sent_at"),
            created_at=F("message__created_at"),
            delivery=Subquery(latest, output_field=JSONField()),
        )
    )


def cluster_actions(*, cluster: Cluster) -> QuerySet[ClusterAction]:
    """The cluster's audit log, newest first."""
    return ClusterAction.objects.filter(cluster=cluster, tenant_id=cluster.tenant_id).order_by(
        *ordering_expressions(ClusterAction, ACTION_ORDERING)
    )


def clusters_of_tenant(*, tenant: Tenant, cluster_ids: list[UUID]) -> dict[UUID, Cluster]:
    """The tenant's clusters among ``cluster_ids``, by id (other tenants' ids are simply absent)."""
    return {c.pk: c for c in Cluster.objects.filter(tenant=tenant, pk__in=cluster_ids).defer("vector_sum")}


def message_ids_of_tenant(*, tenant: Tenant, message_ids: list[UUID]) -> set[UUID]:
    """The ids among ``message_ids`` of the tenant's live messages (not in a deleted conversation)."""
    return set(
        Message.objects.filter(tenant=tenant, pk__in=message_ids, conversation__deleted_at__isnull=True).values_list(
            "pk", flat=True
        )
    )


@dataclass(frozen=True)
class MessageCluster:
    """Where one message stands: its membership (None while it is not clustered, e.g. pending
    embedding or not inbound), the cluster, and every answer delivery made for it."""

    message: Message
    membership: ClusterMembership | None
    deliveries: list[AnswerDelivery]

    @property
    def cluster(self) -> Cluster | None:
        return None if self.membership is None else self.membership.cluster

    @property
    def suggested_answer(self) -> str | None:
        """The answer suggested to the message: its cluster's current answer, when the message
        met it by joining (or being moved into) the cluster while it was answered."""
        if self.membership is None or not self.membership.answer_suggested:
            return None
        return self.membership.cluster.answer or None


def message_cluster(*, tenant: Tenant, message_id: UUID) -> MessageCluster | None:
    """The cluster of the tenant's message ``message_id``, or None when the tenant has no such
    (live) message. Two queries."""
    message = (
        Message.objects.filter(tenant=tenant, pk=message_id, conversation__deleted_at__isnull=True)
        .select_related("cluster_membership__cluster")
        .defer("raw_payload", "cluster_membership__cluster__vector_sum")
        .first()
    )
    if message is None:
        return None
    membership: ClusterMembership | None = getattr(message, "cluster_membership", None)
    deliveries = list(AnswerDelivery.objects.filter(tenant=tenant, message_id=message.pk).order_by(*_DELIVERY_ORDERING))
    return MessageCluster(message=message, membership=membership, deliveries=deliveries)


@dataclass(frozen=True)
class ClusteringStats:
    """The tenant's clustering figures (see ``clustering_stats``)."""

    days: int
    since: datetime
    open: int
    answered: int
    archived: int
    messages_clustered: int
    new_clusters: int
    answered_joins: int

    @property
    def total(self) -> int:
        return self.open + self.answered + self.archived

    @property
    def hit_rate(self) -> float | None:
        """``answered_joins / messages_clustered``; None when nothing was clustered."""
        if not self.messages_clustered:
            return None
        return round(self.answered_joins / self.messages_clustered, 4)


def clustering_stats(*, tenant: Tenant, days: int) -> ClusteringStats:
    """Clusters by status (now), and over the last ``days`` days (by ``joined_at``):

    - ``messages_clustered``: inbound messages that the worker put in a cluster, each one lookup
      of the semantic response cache;
    - ``new_clusters``: of those, the ones that started a cluster (no look-alike existed);
    - ``answered_joins``: of those, the ones that joined a cluster while it was answered and so
      were sent its answer as a suggestion: the cache hits;
    - ``hit_rate`` = ``answered_joins / messages_clustered``.

    Memberships are counted where they are now: a message a moderator moved (merge, split,
    remove) counts in ``messages_clustered`` but neither as a founder nor as a hit, because the
    move rewrote how it got there. Messages of deleted conversations leave their clusters and are
    not counted. Two queries, on the (tenant, status, …) and (tenant, -joined_at) indexes."""
    since = timezone.now() - timedelta(days=days)
    by_status = Cluster.objects.filter(tenant=tenant).aggregate(
        **{status: Count("pk", filter=Q(status=status)) for status in ClusterStatus.values}
    )
    joins = ClusterMembership.objects.filter(tenant=tenant, joined_at__gte=since).aggregate(
        messages_clustered=Count("pk"),
        new_clusters=Count("pk", filter=Q(method=JoinMethod.FOUNDER)),
        answered_joins=Count("pk", filter=Q(answer_suggested=True) & ~Q(method=JoinMethod.MODERATOR)),
    )
    return ClusteringStats(
        days=days,
        since=since,
        open=by_status[ClusterStatus.OPEN],
        answered=by_status[ClusterStatus.ANSWERED],
        archived=by_status[ClusterStatus.ARCHIVED],
        messages_clustered=joins["messages_clustered"],
        new_clusters=joins["new_clusters"],
        answered_joins=joins["answered_joins"],
    )
