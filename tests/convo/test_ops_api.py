"""GET /api/v1/ops/stats and /api/v1/ops/alerts: who may read them, and what they report."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework.test import APIClient

from conversations.models import Conversation, EmbeddingCacheStats, EmbeddingState, Message
from convo.monitoring.models import Alert
from convo.monitoring.timings import timings_discard, timings_flush
from tests.factories import MessageFactory

STATS = "/api/v1/ops/stats"
ALERTS = "/api/v1/ops/alerts"


@pytest.fixture(autouse=True)
def _no_leftover_timings() -> Iterator[None]:
    timings_discard()
    yield
    timings_discard()


@pytest.fixture
def staff(db: Any) -> APIClient:
    client = APIClient()
    client.force_login(User.objects.create_user("ops", password="x", is_staff=True))
    return client


def test_anonymous_callers_get_401_and_tenants_403(db, client, api):
    anonymous = client.get(STATS)
    assert anonymous.status_code == 401
    assert anonymous["WWW-Authenticate"] == "Bearer"
    assert api.get(STATS).status_code == 403  # a tenant's key: authenticated, not staff
    assert api.get(ALERTS).status_code == 403


def test_a_logged_in_user_who_is_not_staff_gets_403(db):
    client = APIClient()
    client.force_login(User.objects.create_user("someone", password="x"))
    assert client.get(STATS).status_code == 403


def test_the_ops_token_opens_the_endpoints_and_a_wrong_one_is_refused(db, client, settings):
    settings.OPS_TOKEN = "s3cret-ops-token"
    assert client.get(STATS, HTTP_AUTHORIZATION="Bearer s3cret-ops-token").status_code == 200
    assert client.get(ALERTS, HTTP_AUTHORIZATION="Bearer s3cret-ops-token").status_code == 200
    assert client.get(STATS, HTTP_AUTHORIZATION="Bearer guess").status_code == 401
    settings.OPS_TOKEN = ""
    # No token configured: no bearer token opens anything.
    assert client.get(STATS, HTTP_AUTHORIZATION="Bearer ").status_code == 401


def test_stats_report_the_queue_cache_storage_and_the_timings_of_real_requests(staff, api):
    accepted = api.post("/api/v1/messages", {"user_id": "u1", "session_id": "s1", "text": "hello there"}, format="json")
    assert accepted.status_code == 202
    MessageFactory.create_batch(2)
    failed = MessageFactory()
    Message.objects.filter(pk=failed.pk).update(embedding_state=EmbeddingState.FAILED)
    old = MessageFactory()
    Message.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(seconds=600))
    EmbeddingCacheStats.objects.create(model_id="m", day=timezone.now().date(), hot_hits=30, durable_hits=10, misses=60)
    EmbeddingCacheStats.objects.create(
        model_id="m", day=timezone.now().date() - timedelta(days=3), hot_hits=0, durable_hits=0, misses=100
    )
    timings_flush()

    body = staff.get(STATS).json()

    queue = {row["kind"]: row for row in body["queue"]}
    pending_messages = Message.objects.filter(embedding_state=EmbeddingState.PENDING).count()
    assert queue["message"]["pending"] == pending_messages == 4  # the API's, two, and the old one
    assert queue["message"]["failed"] == 1
    assert queue["message"]["oldest_pending_seconds"] > 500
    assert queue["conversation"]["pending"] == Conversation.objects.filter(embedding_state="pending").count()
    assert set(queue) == {"message", "conversation", "knowledge"}

    today, week = body["embedding_cache"]
    assert (today["days"], today["hot_hits"], today["durable_hits"], today["misses"]) == (1, 30, 10, 60)
    assert today["hit_rate"] == 0.4
    assert week["misses"] == 160
    assert week["hit_rate"] == 0.2

    timings = {(row["operation"], row["window_minutes"], row["outcome"]): row for row in body["timings"]}
    assert timings[("ingest_ack", 5, "ok")]["count"] == 1
    assert timings[("batch_insert", 5, "ok")]["count"] == 1
    assert timings[("ingest_ack", 60, "ok")]["p95_ms"] > 0
    assert timings[("search", 5, "ok")]["count"] == 0
    assert body["timings_store"] == "database"

    tables = {row["table"]: row for row in body["storage"]["tables"]}
    assert tables["conversations_message"]["total_bytes"] >= tables["conversations_message"]["indexes_bytes"] > 0
    assert "convo_alert" in tables
    assert any(row["table"] == "conversations_message" for row in body["storage"]["indexes"])
    pool = body["connection_pool"]
    assert pool is None or pool["max_size"] >= pool["size"] >= pool["idle"]


def test_a_rejected_ingest_is_timed_as_answered_and_the_failure_as_an_error(staff, api):
    assert api.post("/api/v1/messages", {"user_id": "u1"}, format="json").status_code == 400
    timings_flush()
    timings = {(r["operation"], r["window_minutes"], r["outcome"]): r for r in staff.get(STATS).json()["timings"]}
    assert timings[("ingest_ack", 5, "ok")]["count"] == 1
    assert timings[("batch_insert", 5, "ok")]["count"] == 0  # never reached the service


def test_alerts_list_newest_first_filtered_by_state(staff):
    now = timezone.now()
    resolved = Alert.objects.create(
        rule="queue_size",
        raised_at=now - timedelta(hours=2),
        resolved_at=now - timedelta(hours=1),
        value=900,
        threshold=500,
        message="900 items wait",
    )
    open_alert = Alert.objects.create(
        rule="embedding_lag", raised_at=now, value=400, threshold=300, message="waited 400 s"
    )
    everything = staff.get(ALERTS).json()
    assert [row["id"] for row in everything] == [open_alert.pk, resolved.pk]
    assert everything[0]["resolved_at"] is None
    assert [row["id"] for row in staff.get(ALERTS, {"state": "open"}).json()] == [open_alert.pk]
    assert [row["id"] for row in staff.get(ALERTS, {"state": "resolved"}).json()] == [resolved.pk]
    assert len(staff.get(ALERTS, {"limit": 1}).json()) == 1


@pytest.mark.parametrize(("params", "field"), [({"state": "closed"}, "state"), ({"limit": 0}, "limit")])
def test_bad_alert_filters_are_400s_naming_the_field(staff, params, field):
    response = staff.get(ALERTS, params)
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_the_ops_endpoints_are_in_the_openapi_schema(client):
    schema = client.get("/api/schema/?format=json").json()
    assert "/api/v1/ops/stats" in schema["paths"]
    assert "/api/v1/ops/alerts" in schema["paths"]
    stats = schema["components"]["schemas"]["OpsStats"]
    assert {"timings", "queue", "embedding_cache", "connection_pool", "storage"} <= set(stats["properties"])


def test_a_timing_store_that_is_down_leaves_the_other_figures(staff, settings):
    from convo.monitoring.timing_stores import timing_store_default

    settings.TIMINGS_STORE = "redis"
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    timing_store_default.cache_clear()
    try:
        response = staff.get(STATS)
    finally:
        timing_store_default.cache_clear()
    assert response.status_code == 200
    body = response.json()
    assert body["timings"] == []
    assert body["timings_store"] == "redis"
    assert "ConnectionError" in body["timings_error"]
    assert {row["kind"] for row in body["queue"]} == {"message", "conversation", "knowledge"}
