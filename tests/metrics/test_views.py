"""The metric views hold what seed 001 asks of them, computed from rows stored by the real services."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from conversations.models import Channel, Message, MessageEmbedding
from conversations.services.embedding import embedding_drain
from feedback.models import Feedback
from metrics.matviews import CONVERSATION_METRICS, METRIC_VIEWS, PERFORMANCE_STATS
from metrics.services import UnknownMetricView, metric_view_is_populated, metric_view_refresh
from tests.factories import TenantFactory
from tests.metrics.data import backdate, ingest, refresh_all, view_rows

pytestmark = pytest.mark.django_db


def test_views_start_empty_and_the_first_refresh_populates_then_later_ones_are_concurrent():
    for view in METRIC_VIEWS:
        assert not metric_view_is_populated(view=view)
        assert metric_view_refresh(view=view).mode == "populated"
        assert metric_view_is_populated(view=view)
        assert metric_view_refresh(view=view).mode == "concurrent"


def test_each_view_has_the_unique_index_a_concurrent_refresh_needs():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename, indexdef FROM pg_indexes WHERE tablename = ANY(%s) AND indexdef LIKE 'CREATE UNIQUE%%'",
            [list(METRIC_VIEWS)],
        )
        unique = dict(cursor.fetchall())
    assert "(day, tenant_id, channel)" in unique[CONVERSATION_METRICS]
    assert "(hour, tenant_id)" in unique[PERFORMANCE_STATS]


def test_unknown_view_is_refused():
    with pytest.raises(UnknownMetricView):
        metric_view_refresh(view="conversations_message")


def test_conversation_metrics_per_day_tenant_and_channel():
    tenant, other = TenantFactory(), TenantFactory()
    yesterday = timezone.now().replace(hour=10, minute=0, second=0, microsecond=0) - dt.timedelta(days=1)
    telegram = ingest(tenant, ["héllo", "abc", "abcd"], channel=Channel.TELEGRAM)  # 6 + 3 + 4 bytes
    web = ingest(tenant, ["x" * 10], channel=Channel.WEB, user="u2")
    ingest(other, ["other tenant"], channel=Channel.TELEGRAM)
    embedding_drain(seconds=30)
    # Two embedded 2 s and 10 s after arrival, one still pending.
    backdate(telegram[:1], created_at=yesterday, embedded_after_seconds=2)
    backdate(telegram[1:2], created_at=yesterday, embedded_after_seconds=10)
    backdate(telegram[2:], created_at=yesterday, embedded_after_seconds=None)
    Message.objects.filter(id=telegram[2]).update(embedding_state="pending")
    MessageEmbedding.objects.filter(item_id=telegram[2]).delete()
    Feedback.objects.create(
        tenant=tenant, conversation=Message.objects.get(id=web[0]).conversation, kind="rating", value=4, source="web"
    )
    Feedback.objects.create(
        tenant=tenant, conversation=Message.objects.get(id=web[0]).conversation, kind="thumbs", value=-1, source="web"
    )

    refresh_all()
    rows = view_rows(CONVERSATION_METRICS, "WHERE tenant_id = %s ORDER BY day, channel", [tenant.id])

    by_key = {(row["day"], row["channel"]): row for row in rows}
    today = timezone.now().date()
    tg = by_key[(yesterday.date(), "telegram")]
    assert tg["messages"] == 3
    assert tg["message_bytes"] == 13  # octets, not characters: "é" is two
    assert (tg["messages_done"], tg["messages_pending"]) == (2, 1)
    assert tg["embedding_lag_p50_seconds"] == pytest.approx(6.0)
    assert tg["embedding_lag_p95_seconds"] == pytest.approx(2 + 0.95 * 8)
    assert tg["conversations"] == 0  # the conversation itself was created today
    assert by_key[(today, "telegram")]["conversations"] == 1
    web_row = by_key[(today, "web")]
    assert (web_row["messages"], web_row["conversations"], web_row["message_bytes"]) == (1, 1, 10)
    assert (web_row["feedback_rating_4"], web_row["feedback_thumbs_down"], web_row["feedback_rating_5"]) == (1, 1, 0)
    assert len(view_rows(CONVERSATION_METRICS, "WHERE tenant_id = %s", [other.id])) == 1


def test_performance_stats_hourly_batches_and_embedding_latency():
    tenant = TenantFactory()
    hour = timezone.now().replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=3)
    first = ingest(tenant, ["a", "b", "c"])  # one batch of 3 in one conversation
    second = ingest(tenant, ["d"], user="u2")  # one batch of 1 in another
    embedding_drain(seconds=30)
    backdate(first, created_at=hour + dt.timedelta(minutes=5), embedded_after_seconds=1)
    backdate(second, created_at=hour + dt.timedelta(minutes=6), embedded_after_seconds=3)
    old = ingest(tenant, ["too old"], user="u3")
    backdate(old, created_at=timezone.now() - dt.timedelta(days=8), embedded_after_seconds=None)

    refresh_all()
    (row,) = view_rows(PERFORMANCE_STATS, "WHERE tenant_id = %s AND hour = %s", [tenant.id, hour])

    assert row["messages"] == 4
    assert row["ingest_batches"] == 2
    assert (row["batch_size_max"], row["batch_size_avg"]) == (3, pytest.approx(2.0))
    assert row["conversations_with_messages"] == 2
    assert row["messages_embedded"] == 4
    assert row["embedding_latency_max_seconds"] == pytest.approx(3.0)
    assert row["embedding_latency_p50_seconds"] == pytest.approx(1.0)
    # The view keeps 7 days: the 8-day-old message is in no row.
    assert sum(r["messages"] for r in view_rows(PERFORMANCE_STATS, "WHERE tenant_id = %s", [tenant.id])) == 4


def test_refresh_command_refreshes_one_view_or_both(capsys):
    call_command("convo_metrics_refresh", "--view", PERFORMANCE_STATS)
    assert metric_view_is_populated(view=PERFORMANCE_STATS)
    assert not metric_view_is_populated(view=CONVERSATION_METRICS)
    call_command("convo_metrics_refresh")
    out = capsys.readouterr().out
    assert "performance_stats: concurrent" in out
    assert "conversation_metrics: populated" in out


def test_schedules_are_created_once_with_the_configured_intervals():
    from django_q.models import Schedule

    call_command("convo_schedules")
    call_command("convo_schedules")
    conversation = Schedule.objects.get(func="metrics.tasks.refresh_conversation_metrics")
    performance = Schedule.objects.get(func="metrics.tasks.refresh_performance_stats")
    assert (conversation.schedule_type, conversation.minutes, conversation.repeats) == (Schedule.MINUTES, 60, -1)
    assert performance.minutes == 5


def test_scheduled_task_refreshes():
    from metrics.tasks import refresh_conversation_metrics

    assert refresh_conversation_metrics() == "populated"
    assert refresh_conversation_metrics() == "concurrent"
