"""Data for the metric-view tests, stored through the real ingest and embedding services."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import connection

from conversations.models import Channel, Message, Tenant
from conversations.payloads import InboundMessageIn
from conversations.services.ingest import message_ingest_batch
from metrics.matviews import METRIC_VIEWS
from metrics.services import metric_view_refresh


def ingest(tenant: Tenant, texts: list[str], *, channel: Channel = Channel.WEB, user: str = "u1") -> list[Any]:
    """One ingest batch (one transaction, so one shared ``created_at``) of inbound messages."""
    payloads = [
        InboundMessageIn(text=text, user_id=user, session_id=f"{user}-{channel}", channel=channel) for text in texts
    ]
    return [result.id for result in message_ingest_batch(tenant=tenant, payloads=payloads)]


def backdate(message_ids: list[Any], *, created_at: dt.datetime, embedded_after_seconds: float | None) -> None:
    """Move messages (and their first vector) in time, so lag and buckets are known exactly."""
    Message.objects.filter(id__in=message_ids).update(created_at=created_at)
    if embedded_after_seconds is not None:
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE conversations_messageembedding SET created_at = %s WHERE item_id = ANY(%s)",
                [created_at + dt.timedelta(seconds=embedded_after_seconds), list(message_ids)],
            )


def refresh_all() -> None:
    for view in METRIC_VIEWS:
        metric_view_refresh(view=view)


def view_rows(view: str, where: str = "", params: list[Any] | None = None) -> list[dict[str, Any]]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {view} {where}", params or [])
        names = [column.name for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
