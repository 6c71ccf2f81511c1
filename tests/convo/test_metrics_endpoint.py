"""/metrics: its protection, the text format, and the sum over processes in multi-process mode."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conversations.models import EmbeddingState, Message
from tests.convo.monitoring_support import run_child
from tests.factories import MessageFactory

TOKEN = "scrape-token-123"


@pytest.fixture
def metrics_on(settings: Any) -> Any:
    settings.METRICS_ENABLED = True
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_IPS = []
    return settings


def scrape(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_disabled_metrics_are_404(client, settings):
    settings.METRICS_ENABLED = False
    settings.METRICS_TOKEN = TOKEN
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 404


def test_without_the_token_401_and_with_a_wrong_one_403(client, metrics_on):
    missing = client.get("/metrics")
    assert missing.status_code == 401
    assert missing["WWW-Authenticate"] == "Bearer"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer nope").status_code == 403
    metrics_on.METRICS_TOKEN = ""
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 403


@pytest.mark.django_db
def test_an_allowed_network_scrapes_without_the_token(client, metrics_on):
    metrics_on.METRICS_ALLOWED_IPS = ["10.0.0.0/8", "not-an-address"]
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.168.1.1").status_code == 401


def test_only_get_is_served(client, metrics_on):
    assert client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405


@pytest.mark.django_db
def test_requests_show_up_as_histograms_counters_and_queue_gauges(
    client, api, metrics_on, django_capture_on_commit_callbacks
):
    before = scrape(client)
    key = ("convo_operation_duration_seconds_count", (("operation", "ingest_ack"), ("outcome", "ok")))
    ingested = ("convo_ingested_items_total", (("kind", "message"),))
    unique = uuid.uuid4().hex  # never in the (process-wide) hot cache: each text is a miss
    batch = {"messages": [{"user_id": f"u{i}", "session_id": "s", "text": f"text {unique} {i}"} for i in range(3)]}
    embedded = ("convo_embedded_items_total", (("kind", "message"),))
    # Items count once committed; the commit also wakes the (synchronous) worker, which embeds them.
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post("/api/v1/messages/batch", batch, format="json").status_code == 202
    after = scrape(client)
    assert after[key] == before.get(key, 0) + 1
    assert after[ingested] == before.get(ingested, 0) + 3
    assert after[embedded] == before.get(embedded, 0) + 3
    misses = ("convo_embedding_cache_lookups_total", (("result", "miss"),))
    assert after[misses] == before.get(misses, 0) + 3

    MessageFactory.create_batch(2)
    processing = MessageFactory()
    Message.objects.filter(pk=processing.pk).update(embedding_state=EmbeddingState.PROCESSING)
    after = scrape(client)
    pending = Message.objects.filter(embedding_state=EmbeddingState.PENDING).count()
    assert after[("convo_queue_items", (("kind", "message"), ("state", "pending")))] == pending == 2
    assert after[("convo_queue_items", (("kind", "message"), ("state", "processing")))] == 1
    assert after[("convo_queue_oldest_pending_seconds", (("kind", "message"),))] >= 0
    assert after[("convo_alerts_open", (("rule", "queue_size"),))] == 0
    # Tenant-free labels only.
    for _, labels in after:
        assert {name for name, _ in labels} <= {
            "operation",
            "outcome",
            "kind",
            "state",
            "result",
            "decision",
            "rule",
            "le",
        }


@pytest.mark.django_db
def test_multi_process_mode_sums_what_every_process_recorded(client, metrics_on, tmp_path, monkeypatch):
    child = (
        "from convo.monitoring.prometheus import metrics_ingested_count, metrics_lookup_count\n"
        "from convo.monitoring.timings import timing_record\n"
        "for _ in range(5):\n"
        "    timing_record(operation='search', seconds=0.03, ok=True)\n"
        "timing_record(operation='search', seconds=3.0, ok=False)\n"
        "metrics_ingested_count(kind='message', count=7)\n"
        "metrics_lookup_count(decision='answer')\n"
    )
    run_child(child, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    run_child(child, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    assert len(list(tmp_path.glob("*.db"))) >= 2  # each process wrote its own files
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    samples = scrape(client)
    ok = (("operation", "search"), ("outcome", "ok"))
    assert samples[("convo_operation_duration_seconds_count", ok)] == 10
    assert samples[("convo_operation_duration_seconds_bucket", (("le", "0.02"), *ok))] == 0
    assert samples[("convo_operation_duration_seconds_bucket", (("le", "0.05"), *ok))] == 10
    assert samples[("convo_operation_duration_seconds_count", (("operation", "search"), ("outcome", "error")))] == 2
    assert samples[("convo_ingested_items_total", (("kind", "message"),))] == 14
    assert samples[("convo_answer_lookups_total", (("decision", "answer"),))] == 2
    assert ("convo_queue_items", (("kind", "message"), ("state", "pending"))) in samples
