"""Moderator actions on clusters: answer, relabel, reopen, archive, remove a message, merge, split.

One code path for the API, the admin and commands. Each action runs in one transaction under the
tenant's clustering lock (so it never interleaves with the worker's joins), re-reads the clusters
it changes, recomputes sizes and centroids from the members whenever members move (never by
arithmetic on stale numbers), writes an audit record with before and after, and drops the
tenant's cached cluster lists once it commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import connection, transaction
from django.utils import timezone

from clustering.list_cache import cluster_list_cache_invalidate_on_commit
from clustering.models import (
    JOINABLE,
    AnswerDelivery,
    Cluster,
    ClusterAction,
    ClusterActionKind,
    ClusterMembership,
    ClusterStatus,
    DeliveryStatus,
    JoinMethod,
)
from clustering.services.assignment import LABEL_CHARS, cluster_best
from clustering.services.deliveries import delivery_fanout, delivery_suggest
from clustering.services.locking import tenants_clustering_lock
from clustering.services.scoring import centre_load, tenant_thresholds
from conversations.models import Conversation, Message, MessageEmbedding
from convo.errors import Conflict, NotFound, ServiceError
from feedback.services import learning_item_from_cluster_answer

_CLUSTERS = Cluster._meta.db_table
_MEMBERS = ClusterMembership._meta.db_table
_VECTORS = MessageEmbedding._meta.db_table
_MESSAGES = Message._meta.db_table


@dataclass(frozen=True)
class Actor:
    """Who acts: ``label`` is what the audit log shows ("user:alice", "api-key:AbC12", "system")."""

    label: str
    user: AbstractBaseUser | None = None

    @classmethod
    def for_user(cls, user: AbstractBaseUser) -> Actor:
        return cls(label=f"user:{user.get_username()}", user=user)


SYSTEM = Actor(label="system")


@transaction.atomic
def cluster_answer(*, cluster: Cluster, answer: str, actor: Actor) -> Cluster:
    """Answer the cluster (or replace its answer): every member gets a delivery of it, and
    messages that join while it stays answered get it as a suggestion."""
    text = answer.strip()
    if not text:
        raise ServiceError("An answer is required.", fields={"answer": ["This field may not be blank."]})
    if len(text) > settings.CLUSTER_MAX_ANSWER_CHARS:
        raise ServiceError(
            "The answer is too long.",
            fields={"answer": [f"Ensure this field has at most {settings.CLUSTER_MAX_ANSWER_CHARS} characters."]},
        )
    current = _locked(cluster)
    if current.status == ClusterStatus.ARCHIVED:
        raise Conflict("An archived cluster cannot be answered: reopen it first.")
    before = _snapshot(current)
    current.status = ClusterStatus.ANSWERED
    current.answer = text
    current.answer_version += 1
    current.answered_by = actor.label[:200]
    current.answered_at = timezone.now()
    current.updated_at = current.answered_at
    current.save(update_fields=["status", "answer", "answer_version", "answered_by", "answered_at", "updated_at"])
    made = delivery_fanout(cluster=current)
    _audit(current, ClusterActionKind.ANSWER, actor, before, {**_snapshot(current), "deliveries": made})
    learning_item_from_cluster_answer(cluster=current)
    return current


@transaction.atomic
def cluster_relabel(*, cluster: Cluster, label: str, actor: Actor) -> Cluster:
    text = " ".join(label.split())
    if not text or len(text) > 200:
        raise ServiceError("Invalid label.", fields={"label": ["Must be 1 to 200 characters."]})
    current = _locked(cluster)
    before = _snapshot(current)
    current.label = text
    current.updated_at = timezone.now()
    current.save(update_fields=["label", "updated_at"])
    _audit(current, ClusterActionKind.RELABEL, actor, before, _snapshot(current))
    return current


@transaction.atomic
def cluster_reopen(*, cluster: Cluster, actor: Actor) -> Cluster:
    """Back to open: new members no longer get the answer (which is kept, for reference)."""
    current = _locked(cluster)
    if current.status == ClusterStatus.OPEN:
        return current
    if current.merged_into_id is not None:
        raise Conflict("This cluster was merged into another; reopen that one instead.")
    if current.size == 0:  # its vector sum is stale: reopened, it would draw look-alikes to no members
        raise Conflict("An empty cluster cannot be reopened.")
    before = _snapshot(current)
    _set_status(current, ClusterStatus.OPEN)
    _audit(current, ClusterActionKind.REOPEN, actor, before, _snapshot(current))
    return current


@transaction.atomic
def cluster_archive(*, cluster: Cluster, actor: Actor) -> Cluster:
    """Archive: the cluster keeps its members but takes no new ones and leaves the open lists."""
    current = _locked(cluster)
    if current.status == ClusterStatus.ARCHIVED:
        return current
    before = _snapshot(current)
    _set_status(current, ClusterStatus.ARCHIVED)
    _audit(current, ClusterActionKind.ARCHIVE, actor, before, _snapshot(current))
    return current


@transaction.atomic
def cluster_remove_message(*, cluster: Cluster, message_id: UUID, actor: Actor) -> Cluster:
    """Take a message out of the cluster and re-home it: into the most similar other joinable
    cluster when it passes the tenant's threshold, else into a new cluster of its own. Returns
    the cluster the message lands in."""
    current = _locked(cluster)
    membership = ClusterMembership.objects.filter(cluster=current, message_id=message_id).first()
    if membership is None:
        raise ServiceError("Not a member.", fields={"message_id": ["This message is not in this cluster."]})
    vector = _member_vector(current, message_id)
    before = _snapshot(current)
    best, _ = cluster_best(
        tenant_id=current.tenant_id,
        space=current.space,
        vector=vector,
        centre=centre_load(tenant_id=current.tenant_id, space=current.space),
        thresholds=tenant_thresholds(tenant_id=current.tenant_id),
        exclude=current.pk,
    )
    if best is not None:
        home = Cluster.objects.select_for_update().get(pk=best.id)
        similarity = best.similarity
    else:
        home = _new_cluster_for(current, message_id)
        similarity = 1.0
    _move([message_id], source=current, target=home, similarity=similarity)
    _recompute([current.pk, home.pk])
    current.refresh_from_db()
    home.refresh_from_db()
    _archive_if_empty(current)
    _audit(
        current,
        ClusterActionKind.REMOVE_MESSAGE,
        actor,
        before,
        {**_snapshot(current), "message_id": str(message_id), "moved_to": str(home.pk)},
    )
    _audit(
        home,
        ClusterActionKind.REMOVE_MESSAGE,
        actor,
        {},
        {**_snapshot(home), "message_id": str(message_id), "moved_from": str(current.pk)},
    )
    return home


@transaction.atomic
def cluster_merge(*, target: Cluster, sources: list[Cluster], actor: Actor) -> Cluster:
    """Move every member of ``sources`` into ``target``. The sources are archived, empty, and
    point at the target. Members that arrive in an answered target get its answer."""
    source_ids = {source.pk for source in sources} - {target.pk}
    if not source_ids:
        raise ServiceError("Nothing to merge.", fields={"cluster_ids": ["Name at least one other cluster."]})
    tenants_clustering_lock(tenant_ids=[target.tenant_id])
    locked = {c.pk: c for c in Cluster.objects.select_for_update().filter(pk__in={*source_ids, target.pk})}
    merged_into = locked.get(target.pk)
    if merged_into is None or any(pk not in locked for pk in source_ids):
        raise NotFound("Cluster not found.")
    if any(c.tenant_id != merged_into.tenant_id for c in locked.values()):
        raise ServiceError("These clusters cannot be merged.", fields={"cluster_ids": ["Not clusters of this tenant."]})
    if any(c.space_id != merged_into.space_id for c in locked.values()):
        raise ServiceError(
            "These clusters cannot be merged.",
            fields={"cluster_ids": ["Made with another embedding model (left behind by a model switch)."]},
        )
    if merged_into.status == ClusterStatus.ARCHIVED:
        raise Conflict("The target cluster is archived: reopen it first.")
    before = {"target": _snapshot(merged_into), "sources": [_snapshot(locked[pk]) for pk in sorted(source_ids)]}
    moved = list(
        ClusterMembership.objects.filter(cluster_id__in=source_ids)
        .order_by("message_id")
        .values_list("message_id", flat=True)
    )
    _move(moved, source=None, target=merged_into, similarity=None)
    _recompute([merged_into.pk, *source_ids])
    now = timezone.now()
    Cluster.objects.filter(pk__in=source_ids).update(
        status=ClusterStatus.ARCHIVED, merged_into=merged_into, updated_at=now
    )
    merged_into.refresh_from_db()
    after = {**_snapshot(merged_into), "moved": len(moved), "sources": sorted(str(pk) for pk in source_ids)}
    _audit(merged_into, ClusterActionKind.MERGE, actor, before, after)
    for pk in source_ids:
        source = locked[pk]
        _audit(source, ClusterActionKind.MERGE, actor, _snapshot(source), {"merged_into": str(merged_into.pk)})
    return merged_into


@transaction.atomic
def cluster_split(*, cluster: Cluster, message_ids: list[UUID], actor: Actor, label: str = "") -> Cluster:
    """Move the chosen members into a new open cluster; returns it."""
    wanted = list(dict.fromkeys(message_ids))
    if not wanted:
        raise ServiceError("Nothing to split.", fields={"message_ids": ["Choose at least one message."]})
    if len(wanted) > settings.CLUSTER_MAX_SPLIT_MESSAGES:
        raise ServiceError(
            "Too many messages.",
            fields={"message_ids": [f"Ensure this list has at most {settings.CLUSTER_MAX_SPLIT_MESSAGES} items."]},
        )
    current = _locked(cluster)
    members = set(
        ClusterMembership.objects.filter(cluster=current, message_id__in=wanted).values_list("message_id", flat=True)
    )
    strangers = [str(m) for m in wanted if m not in members]
    if strangers:
        raise ServiceError(
            "Not members.", fields={"message_ids": [f"Not in this cluster: {', '.join(strangers[:10])}."]}
        )
    if len(members) >= current.size:
        raise ServiceError(
            "A split must leave members behind.",
            fields={"message_ids": ["Choose fewer messages than the cluster has (or relabel it instead)."]},
        )
    before = _snapshot(current)
    split_off = _new_cluster_for(current, wanted[0], label=label)
    _move(wanted, source=current, target=split_off, similarity=None)
    _recompute([current.pk, split_off.pk])
    current.refresh_from_db()
    split_off.refresh_from_db()
    after = {**_snapshot(current), "split_off": str(split_off.pk), "moved": len(wanted)}
    _audit(current, ClusterActionKind.SPLIT, actor, before, after)
    _audit(split_off, ClusterActionKind.SPLIT, actor, {}, {**_snapshot(split_off), "split_from": str(current.pk)})
    return split_off


@transaction.atomic
def clusters_forget_conversation(*, conversation: Conversation) -> int:
    """Take a (soft-deleted) conversation's messages out of their clusters, so deleted text never
    shows in a cluster and sizes and centroids stay right. Returns how many left."""
    tenants_clustering_lock(tenant_ids=[conversation.tenant_id])
    rows = list(
        ClusterMembership.objects.filter(message__conversation_id=conversation.pk).values_list(
            "message_id", "cluster_id"
        )
    )
    if not rows:
        return 0
    touched = sorted({cluster_id for _, cluster_id in rows})
    gone = [message_id for message_id, _ in rows]
    ClusterMembership.objects.filter(message_id__in=gone).delete()
    # Answers not yet delivered are never sent for a deleted conversation.
    AnswerDelivery.objects.filter(message_id__in=gone, status=DeliveryStatus.PENDING).update(
        status=DeliveryStatus.FAILED, last_error="the conversation was deleted"
    )
    _recompute(touched)
    for cluster in Cluster.objects.filter(pk__in=touched):
        _archive_if_empty(cluster)
    cluster_list_cache_invalidate_on_commit(tenant_id=conversation.tenant_id)
    return len(rows)


def cluster_recompute(*, cluster_ids: list[UUID]) -> None:
    """Recompute size, centroid, first/last message time and representative from the members.
    Callers hold the tenant's clustering lock (every service in this module does)."""
    _recompute(cluster_ids)


# --- internals ---------------------------------------------------------------------------------


def _locked(cluster: Cluster) -> Cluster:
    tenants_clustering_lock(tenant_ids=[cluster.tenant_id])
    current = Cluster.objects.select_for_update().select_related("space").filter(pk=cluster.pk).first()
    if current is None:
        raise NotFound("Cluster not found.")
    return current


def _set_status(cluster: Cluster, status: str) -> None:
    cluster.status = status
    cluster.updated_at = timezone.now()
    cluster.save(update_fields=["status", "updated_at"])


def _snapshot(cluster: Cluster) -> dict[str, Any]:
    return {
        "status": cluster.status,
        "size": cluster.size,
        "label": cluster.label,
        "answer": cluster.answer,
        "answer_version": cluster.answer_version,
    }


def _audit(cluster: Cluster, action: str, actor: Actor, before: dict[str, Any], after: dict[str, Any]) -> None:
    ClusterAction.objects.create(
        tenant_id=cluster.tenant_id,
        cluster=cluster,
        action=action,
        actor=actor.label[:200],
        actor_user_id=actor.user.pk if actor.user is not None else None,
        before=before,
        after=after,
    )
    cluster_list_cache_invalidate_on_commit(tenant_id=cluster.tenant_id)


def _member_vector(cluster: Cluster, message_id: UUID) -> list[float]:
    row = MessageEmbedding.objects.filter(item_id=message_id, space_id=cluster.space_id).values_list(
        "embedding", flat=True
    )
    vector = row.first()
    if vector is None:  # a member always has a vector in its cluster's space; a switch rebuilds clusters
        raise Conflict("This message has no vector in the cluster's embedding space.")
    return [float(x) for x in vector]


def _new_cluster_for(template: Cluster, message_id: UUID, *, label: str = "") -> Cluster:
    text = Message.objects.filter(pk=message_id).values_list("text", flat=True).first() or ""
    text = " ".join(text.split())
    return Cluster.objects.create(
        tenant_id=template.tenant_id,
        space_id=template.space_id,
        label=" ".join(label.split())[:200] or text[:LABEL_CHARS],
        representative_id=message_id,
        representative_text=text,
        vector_sum=_member_vector(template, message_id),
        size=0,  # _recompute sets the real figures from the members
    )


def _move(message_ids: list[UUID], *, source: Cluster | None, target: Cluster, similarity: float | None) -> None:
    """Move memberships into ``target`` (from ``source`` when given). Members arriving in an
    answered cluster get its answer as a suggestion."""
    members = ClusterMembership.objects.filter(message_id__in=message_ids)
    if source is not None:
        members = members.filter(cluster=source)
    answered = target.status == ClusterStatus.ANSWERED
    fields: dict[str, Any] = {"cluster": target, "method": JoinMethod.MODERATOR, "answer_suggested": answered}
    if similarity is not None:
        fields["similarity"] = min(1.0, similarity)
    members.update(**fields)
    # A message that left a cluster must not get that cluster's answer any more.
    AnswerDelivery.objects.filter(message_id__in=message_ids, status=DeliveryStatus.PENDING).exclude(
        cluster=target
    ).update(status=DeliveryStatus.FAILED, last_error="the message left the cluster")
    if answered:
        delivery_suggest(cluster_id=target.pk, message_ids=message_ids)


def _recompute(cluster_ids: list[UUID]) -> None:
    """Size, centroid and times from the members; the representative is kept while it is a
    member, else the member nearest the new centroid. An empty cluster keeps its old vector sum
    (it is archived and never compared)."""
    if not cluster_ids:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {_CLUSTERS} AS c
               SET size = COALESCE(s.n, 0),
                   vector_sum = COALESCE(s.total, c.vector_sum),
                   first_message_at = s.first_at, last_message_at = s.last_at, updated_at = now()
              FROM {_CLUSTERS} AS k
              LEFT JOIN LATERAL (
                    SELECT count(*) AS n, sum(e.embedding) AS total,
                           min(COALESCE(msg.sent_at, msg.created_at)) AS first_at,
                           max(COALESCE(msg.sent_at, msg.created_at)) AS last_at
                      FROM {_MEMBERS} AS m
                      JOIN {_MESSAGES} AS msg ON msg.id = m.message_id
                      -- Every member counts; a member without a vector in the space (a model
                      -- switch still catching up) adds nothing to the sum.
                      LEFT JOIN {_VECTORS} AS e ON e.item_id = m.message_id AND e.space_id = k.space_id
                     WHERE m.cluster_id = k.id
                   ) AS s ON true
             WHERE c.id = k.id AND k.id = ANY(%s)
            """,
            [list(cluster_ids)],
        )
        cursor.execute(
            f"""
            UPDATE {_CLUSTERS} AS c
               SET representative_id = best.message_id, representative_text = best.text,
                   -- a label made from the old representative follows it; a moderator's stays
                   label = CASE WHEN c.label = left(c.representative_text, {LABEL_CHARS})
                                THEN left(best.text, {LABEL_CHARS}) ELSE c.label END
              FROM {_CLUSTERS} AS k
              JOIN LATERAL (
                    SELECT m.message_id, msg.text FROM {_MEMBERS} AS m
                      JOIN {_VECTORS} AS e ON e.item_id = m.message_id AND e.space_id = k.space_id
                      JOIN {_MESSAGES} AS msg ON msg.id = m.message_id
                     WHERE m.cluster_id = k.id
                     ORDER BY e.embedding <=> k.vector_sum LIMIT 1
                   ) AS best ON true
             WHERE c.id = k.id AND k.id = ANY(%s) AND c.size > 0
               AND (c.representative_id IS NULL OR NOT EXISTS (
                    SELECT 1 FROM {_MEMBERS} AS r WHERE r.cluster_id = c.id AND r.message_id = c.representative_id))
            """,
            [list(cluster_ids)],
        )
        # An emptied cluster keeps no text of a message that left it (it may have been deleted).
        cursor.execute(
            f"""
            UPDATE {_CLUSTERS}
               SET representative_id = NULL, representative_text = '',
                   label = CASE WHEN label = left(representative_text, {LABEL_CHARS}) THEN '' ELSE label END
             WHERE id = ANY(%s) AND size = 0
            """,
            [list(cluster_ids)],
        )


def _archive_if_empty(cluster: Cluster) -> None:
    if cluster.size == 0 and cluster.status in JOINABLE:
        _set_status(cluster, ClusterStatus.ARCHIVED)
