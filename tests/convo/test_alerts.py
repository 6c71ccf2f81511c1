"""Alerts: one episode per firing, resolved when the rule stops, posted to a webhook."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from conversations.management.commands.convo_schedules import SCHEDULES
from conversations.models import Conversation, EmbeddingCacheStats, EmbeddingState, Message
from convo.monitoring.alerts import alert_rules_read, alerts_evaluate
from convo.monitoring.models import Alert
from convo.monitoring.tasks import alerts_evaluate_task
from convo.monitoring.timings import timing_record, timings_discard, timings_flush
from tests.factories import MessageFactory


@pytest.fixture(autouse=True)
def _quiet_rules(settings: Any) -> Iterator[None]:
    """Every rule off but the one a test turns on; no leftover timings."""
    timings_discard()
    for name in (
        "ALERT_INGEST_ACK_P95_MS",
        "ALERT_EMBEDDING_P95_MS",
        "ALERT_BATCH_INSERT_P95_MS",
        "ALERT_CACHE_HIT_RATE_MIN",
        "ALERT_QUEUE_SIZE_MAX",
        "ALERT_EMBEDDING_LAG_SECONDS",
    ):
        setattr(settings, name, 0)
    settings.ALERT_WEBHOOK_URL = ""
    yield
    timings_discard()


class Receiver(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]
    status = 200

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).received.append(
            {"body": json.loads(self.rfile.read(length)), "content_type": self.headers["Content-Type"]}
        )
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook(settings: Any) -> Iterator[type[Receiver]]:
    handler = type("Handler", (Receiver,), {"received": [], "status": 200})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.ALERT_WEBHOOK_URL = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield handler
    server.shutdown()
    server.server_close()


def _pending(count: int) -> None:
    """``count`` pending messages, each in its own pending conversation: twice count items."""
    MessageFactory.create_batch(count)


def _all_embedded() -> None:
    Message.objects.update(embedding_state=EmbeddingState.DONE)
    Conversation.objects.update(embedding_state=EmbeddingState.DONE)


@pytest.mark.django_db
def test_an_episode_is_raised_once_resolved_and_a_new_firing_is_a_new_episode(settings, webhook):
    settings.ALERT_QUEUE_SIZE_MAX = 7
    _pending(4)

    first = alerts_evaluate()
    assert [alert.rule for alert in first.raised] == ["queue_size"]
    (episode,) = Alert.objects.all()
    assert (episode.value, episode.threshold, episode.resolved_at) == (8.0, 7.0, None)
    assert "8 items wait" in episode.message

    again = alerts_evaluate()  # still firing: nothing new
    assert (again.raised, again.resolved) == ([], [])
    assert Alert.objects.count() == 1

    _all_embedded()
    resolved = alerts_evaluate()
    assert [alert.pk for alert in resolved.resolved] == [episode.pk]
    episode.refresh_from_db()
    assert episode.resolved_at is not None
    assert alerts_evaluate().resolved == []  # resolved once

    _pending(5)
    second = alerts_evaluate()
    assert len(second.raised) == 1
    assert second.raised[0].pk != episode.pk
    assert Alert.objects.filter(rule="queue_size").count() == 2
    assert Alert.objects.filter(rule="queue_size", resolved_at__isnull=True).get().value == 10.0

    events = [(hook["body"]["event"], hook["body"]["rule"], hook["body"]["id"]) for hook in webhook.received]
    assert events == [
        ("raised", "queue_size", episode.pk),
        ("resolved", "queue_size", episode.pk),
        ("raised", "queue_size", second.raised[0].pk),
    ]
    assert webhook.received[0]["content_type"] == "application/json"
    assert webhook.received[1]["body"]["resolved_at"] is not None
    assert webhook.received[0]["body"]["threshold"] == 7.0


@pytest.mark.django_db
def test_a_rule_turned_off_resolves_its_open_episode(settings):
    settings.ALERT_QUEUE_SIZE_MAX = 1
    _pending(2)
    alerts_evaluate()
    settings.ALERT_QUEUE_SIZE_MAX = 0
    assert [alert.rule for alert in alerts_evaluate().resolved] == ["queue_size"]


@pytest.mark.django_db
def test_latency_rules_fire_on_p95_with_enough_samples(settings):
    settings.ALERT_INGEST_ACK_P95_MS = 20
    settings.ALERT_BATCH_INSERT_P95_MS = 100
    settings.ALERT_EMBEDDING_P95_MS = 500
    settings.ALERT_MIN_SAMPLES = 20
    for _ in range(19):
        timing_record(operation="ingest_ack", seconds=0.050, ok=True)
    for _ in range(30):
        timing_record(operation="batch_insert", seconds=0.010, ok=True)
    for _ in range(30):  # a provider that only times out still counts
        timing_record(operation="embedding_call", seconds=2.0, ok=False)
    timings_flush()
    readings = {reading.rule: reading for reading in alert_rules_read()}
    assert not readings["ingest_ack_p95"].firing  # 19 samples: too few to judge
    assert not readings["batch_insert_p95"].firing
    assert readings["embedding_p95"].firing
    timing_record(operation="ingest_ack", seconds=0.050, ok=True)
    timings_flush()
    assert {alert.rule for alert in alerts_evaluate().raised} == {"ingest_ack_p95", "embedding_p95"}


@pytest.mark.django_db
def test_cache_hit_rate_and_embedding_lag_rules(settings):
    settings.ALERT_CACHE_HIT_RATE_MIN = 0.2
    settings.ALERT_CACHE_MIN_LOOKUPS = 100
    settings.ALERT_EMBEDDING_LAG_SECONDS = 300
    today = timezone.now().date()
    stats = EmbeddingCacheStats.objects.create(model_id="m", day=today, hot_hits=5, durable_hits=5, misses=80)
    old = MessageFactory()
    assert {r.rule: r.firing for r in alert_rules_read()} == {"cache_hit_rate": False, "embedding_lag": False}
    EmbeddingCacheStats.objects.filter(pk=stats.pk).update(misses=90)  # 100 lookups, 10 % hits
    Message.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=1))
    raised = {alert.rule: alert for alert in alerts_evaluate().raised}
    assert set(raised) == {"cache_hit_rate", "embedding_lag"}
    assert raised["cache_hit_rate"].value == 0.1
    assert raised["embedding_lag"].value > 3000


@pytest.mark.django_db
def test_a_failing_webhook_is_logged_and_never_raises(settings, caplog, webhook):
    settings.ALERT_QUEUE_SIZE_MAX = 1
    webhook.status = 500
    _pending(2)
    assert len(alerts_evaluate().raised) == 1
    assert len(webhook.received) == 1
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    settings.ALERT_WEBHOOK_URL = f"http://127.0.0.1:{closed_port}/hook"
    _all_embedded()
    assert len(alerts_evaluate().resolved) == 1
    assert sum("alert webhook" in record.getMessage() for record in caplog.records) == 2


@pytest.mark.django_db
def test_the_task_is_scheduled_every_minute_and_counts_changes(settings):
    schedule = SCHEDULES["convo: evaluate alerts"]
    assert (schedule["func"], schedule["minutes"]) == ("convo.monitoring.tasks.alerts_evaluate_task", 1)
    settings.ALERT_QUEUE_SIZE_MAX = 1
    _pending(2)
    assert alerts_evaluate_task() == 1
    assert alerts_evaluate_task() == 0


@pytest.mark.django_db
def test_the_admin_shows_alerts_read_only(client):
    client.force_login(User.objects.create_superuser("root", password="x"))
    alert = Alert.objects.create(rule="queue_size", raised_at=timezone.now(), value=9, threshold=5, message="9 wait")
    listing = client.get("/admin/convo/alert/?state=open")
    assert listing.status_code == 200
    assert b"queue_size" in listing.content
    assert client.get("/admin/convo/alert/add/").status_code == 403
    page = client.get(f"/admin/convo/alert/{alert.pk}/change/")
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert client.post(f"/admin/convo/alert/{alert.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Alert.objects.filter(pk=alert.pk).exists()


@pytest.mark.django_db
def test_an_unreadable_timing_store_neither_raises_nor_resolves_latency_episodes(settings):
    from convo.monitoring.timing_stores import timing_store_default

    settings.ALERT_EMBEDDING_P95_MS = 500
    settings.ALERT_MIN_SAMPLES = 1
    timing_record(operation="embedding_call", seconds=2.0, ok=True)
    timings_flush()
    (episode,) = alerts_evaluate().raised
    settings.TIMINGS_STORE = "redis"
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    timing_store_default.cache_clear()
    try:
        changes = alerts_evaluate()
    finally:
        timing_store_default.cache_clear()
    assert (changes.raised, changes.resolved) == ([], [])
    episode.refresh_from_db()
    assert episode.resolved_at is None
