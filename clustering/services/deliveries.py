"""Answer deliveries: one record per (message, cluster, answer version), made in the transaction
that answers the cluster or adds a member to an answered one, so an answer is never lost and
never made twice. Sending them (webhook) lives in ``clustering.services.webhooks``."""

from __future__ import annotations

from uuid import UUID

from django.db import connection, transaction

from clustering.models import AnswerDelivery, Cluster, ClusterMembership, DeliveryKind, DeliveryStatus

_DELIVERIES = AnswerDelivery._meta.db_table


def delivery_fanout(*, cluster: Cluster) -> int:
    """Make an ``answer`` delivery of the cluster's current answer for every member. Pending
    deliveries of older answers of this cluster are superseded (cancelled as failed): a member
    only ever gets the latest answer. Returns how many deliveries were made."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {_DELIVERIES} SET status = %s, last_error = 'superseded by a newer answer'
             WHERE cluster_id = %s AND status = %s AND answer_version < %s
            """,
            [DeliveryStatus.FAILED, cluster.pk, DeliveryStatus.PENDING, cluster.answer_version],
        )
        cursor.execute(
            f"""
            INSERT INTO {_DELIVERIES}
                (id, tenant_id, cluster_id, message_id, answer_version, kind, answer, status, attempts,
                 next_attempt_at, last_error, created_at)
            SELECT gen_random_uuid(), %s, %s, m.message_id, %s, %s, %s, %s, 0, now(), '', now()
              FROM {ClusterMembership._meta.db_table} AS m WHERE m.cluster_id = %s
            ON CONFLICT (message_id, cluster_id, answer_version) DO NOTHING
            """,
            [
                cluster.tenant_id,
                cluster.pk,
                cluster.answer_version,
                DeliveryKind.ANSWER,
                cluster.answer,
                DeliveryStatus.PENDING,
                cluster.pk,
            ],
        )
        made = cursor.rowcount
    if made:
        delivery_kick_on_commit()
    return made


def delivery_suggest(*, cluster_id: UUID, message_ids: list[UUID]) -> int:
    """Make ``suggestion`` deliveries of an answered cluster's answer for messages that just
    joined it. Returns how many were made."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {_DELIVERIES}
                (id, tenant_id, cluster_id, message_id, answer_version, kind, answer, status, attempts,
                 next_attempt_at, last_error, created_at)
            SELECT gen_random_uuid(), c.tenant_id, c.id, f.message_id, c.answer_version, %s, c.answer, %s, 0,
                   now(), '', now()
              FROM {Cluster._meta.db_table} AS c, unnest(%s::uuid[]) AS f(message_id)
             WHERE c.id = %s AND c.status = 'answered'
            ON CONFLICT (message_id, cluster_id, answer_version) DO NOTHING
            """,
            [DeliveryKind.SUGGESTION, DeliveryStatus.PENDING, message_ids, cluster_id],
        )
        made = cursor.rowcount
    if made:
        delivery_kick_on_commit()
    return made


def delivery_kick_on_commit() -> None:
    """Wake the webhook sender once the deliveries are committed (a lost kick only delays them:
    the delivery schedule sends whatever is due)."""

    def kick() -> None:
        from django_q.tasks import async_task

        async_task("clustering.tasks.send_due_deliveries", group="deliveries", q_options={"ack_failure": True})

    transaction.on_commit(kick, robust=True)
