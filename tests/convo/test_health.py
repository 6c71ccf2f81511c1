"""/healthz and /readyz against the real embedded database, a real Redis where REDIS_URL is set,
and real sockets for the dependencies that are down or hang."""

from __future__ import annotations

import copy
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import yaml
from django.db import connections
from django.utils import timezone

from conversations.models import Conversation, EmbeddingState, Message
from tests.factories import ConversationFactory, MessageFactory

LOCMEM = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "convo-tests"}


def _redis_cache(url: str, *, prefix: str = "convo-tests-readyz", socket_timeout: float = 5.0) -> dict[str, Any]:
    return {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": url,
        "KEY_PREFIX": prefix,
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.DefaultClient",
            "SOCKET_CONNECT_TIMEOUT": socket_timeout,
            "SOCKET_TIMEOUT": socket_timeout,
            "IGNORE_EXCEPTIONS": True,
        },
    }


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never answers: a hung Redis."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:  # the hung check's client reads EOF and its thread ends
        conn.close()
    server.close()


@pytest.fixture
def database_down(settings: Any) -> Iterator[str]:
    """A database alias whose server port is closed, used by the readiness checks."""
    alias = f"down_{uuid.uuid4().hex[:8]}"
    conf = copy.deepcopy(connections.settings["default"])
    conf.update(HOST="127.0.0.1", PORT=str(_closed_port()), CONN_MAX_AGE=0, CONN_HEALTH_CHECKS=False)
    conf["OPTIONS"].pop("pool", None)
    connections.settings[alias] = conf
    settings.READYZ_DATABASE_ALIAS = alias
    yield alias
    del connections.settings[alias]


def _readyz(client: Any) -> tuple[int, dict[str, Any]]:
    response = client.get("/readyz")
    assert response["Content-Type"] == "application/json"
    assert "no-cache" in response["Cache-Control"]
    return response.status_code, response.json()


# --- /healthz -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_healthz_answers_ok_without_credentials_or_queries(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert client.post("/healthz").status_code == 405


@pytest.mark.django_db
def test_the_probes_stay_out_of_the_api_schema(client):
    schema = yaml.safe_load(client.get("/api/schema/").content)
    assert not [path for path in schema["paths"] if "healthz" in path or "readyz" in path]


# --- /readyz: all well ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_readyz_is_ok_with_every_check_reported(client):
    status, body = _readyz(client)
    assert status == 200, body
    assert body["status"] == "ok"
    checks = body["checks"]
    assert set(checks) == {"database", "cache", "worker", "queue_lag"}
    assert checks["database"]["status"] == "ok"
    assert checks["cache"]["status"] == "ok" and checks["cache"]["detail"]["backend"] == "LocMemCache"
    assert checks["worker"]["status"] == "skipped"  # the suite expects no cluster
    assert checks["queue_lag"]["status"] == "ok"
    for check in checks.values():
        assert check["error"] is None and check["required"] is True
        assert isinstance(check["duration_ms"], float)


@pytest.mark.redis
@pytest.mark.django_db
def test_readyz_writes_and_reads_a_real_redis(client, settings, redis_url):
    settings.CACHES = {"default": LOCMEM, "readyz": _redis_cache(redis_url)}
    settings.READYZ_CACHE_ALIAS = "readyz"
    status, body = _readyz(client)
    assert status == 200, body
    assert body["checks"]["cache"] == {**body["checks"]["cache"], "status": "ok", "error": None}
    assert body["checks"]["cache"]["detail"]["backend"] == "RedisCache"


# --- /readyz: dependencies down or hung ----------------------------------------------------------


@pytest.mark.django_db
def test_a_hung_cache_times_out_and_readyz_answers_503(client, settings, silent_server):
    settings.CACHES = {"default": LOCMEM, "readyz": _redis_cache(f"redis://127.0.0.1:{silent_server}/0")}
    settings.READYZ_CACHE_ALIAS = "readyz"
    settings.READYZ_CHECK_TIMEOUT_SECONDS = 0.3  # well under the client's 5 s socket timeout
    status, body = _readyz(client)
    assert status == 503
    assert body["status"] == "unavailable"
    assert body["checks"]["cache"]["status"] == "failed"
    assert body["checks"]["cache"]["error"] == "timed out after 0.3 s"
    assert body["checks"]["database"]["status"] == "ok"  # the other checks are not held up


@pytest.mark.django_db
def test_an_unreachable_redis_fails_the_cache_check_with_the_client_error(client, settings):
    settings.CACHES = {"default": LOCMEM, "readyz": _redis_cache(f"redis://127.0.0.1:{_closed_port()}/0")}
    settings.READYZ_CACHE_ALIAS = "readyz"
    status, body = _readyz(client)
    assert status == 503
    cache = body["checks"]["cache"]
    assert cache["status"] == "failed"
    assert cache["error"] and "timed out" not in cache["error"]  # the real error, not a silent miss


def test_a_database_that_is_down_answers_503_naming_database(client, database_down, django_db_blocker):
    # No django_db mark: nothing here may touch the test database, only the closed port.
    with django_db_blocker.unblock():
        status, body = _readyz(client)
    assert status == 503
    database = body["checks"]["database"]
    assert database["status"] == "failed"
    assert database["error"].startswith("OperationalError")
    assert body["checks"]["cache"]["status"] == "ok"


# --- /readyz: queue lag ---------------------------------------------------------------------------


def _backdate(model: type[Conversation] | type[Message], pk: Any, *, seconds: float) -> None:
    model.objects.filter(pk=pk).update(created_at=timezone.now() - timedelta(seconds=seconds))


@pytest.mark.django_db(transaction=True)
def test_a_pending_message_older_than_the_bound_answers_503_naming_queue_lag(client, settings):
    settings.READYZ_MAX_QUEUE_LAG_SECONDS = 300
    message = MessageFactory()
    _backdate(Message, message.pk, seconds=3600)
    status, body = _readyz(client)
    assert status == 503
    lag = body["checks"]["queue_lag"]
    assert lag["status"] == "failed"
    assert "the oldest pending item has waited" in lag["error"]
    assert lag["detail"]["oldest_pending_seconds"] >= 3600
    assert body["checks"]["database"]["status"] == "ok"


@pytest.mark.django_db(transaction=True)
def test_a_pending_conversation_counts_too_and_an_optional_check_only_reports(client, settings):
    settings.READYZ_MAX_QUEUE_LAG_SECONDS = 300
    settings.READYZ_OPTIONAL_CHECKS = ["queue_lag"]
    conversation = ConversationFactory()
    _backdate(Conversation, conversation.pk, seconds=3600)
    status, body = _readyz(client)
    assert status == 200
    assert body["checks"]["queue_lag"]["status"] == "failed" and body["checks"]["queue_lag"]["required"] is False


@pytest.mark.django_db(transaction=True)
def test_recent_pending_items_and_old_finished_ones_are_within_bounds(client, settings):
    settings.READYZ_MAX_QUEUE_LAG_SECONDS = 300
    done = MessageFactory(
        conversation=ConversationFactory(embedding_state=EmbeddingState.DONE), embedding_state=EmbeddingState.DONE
    )
    _backdate(Message, done.pk, seconds=3600)
    status, body = _readyz(client)
    assert status == 200, body
    assert body["checks"]["queue_lag"]["detail"]["oldest_pending_seconds"] is None
    MessageFactory()  # pending, and just made
    status, body = _readyz(client)
    assert status == 200, body
    assert 0 <= body["checks"]["queue_lag"]["detail"]["oldest_pending_seconds"] < 300


# --- /readyz: worker heartbeat --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_without_shared_stats_the_worker_is_judged_by_its_schedules(client, settings):
    from django_q.models import Schedule

    settings.READYZ_EXPECT_WORKER = True
    settings.READYZ_WORKER_STALE_SECONDS = 120
    status, body = _readyz(client)
    assert body["checks"]["worker"]["status"] == "skipped"  # nothing to tell by
    schedule = Schedule.objects.create(
        func="conversations.tasks.reconcile_embeddings",
        schedule_type=Schedule.MINUTES,
        minutes=1,
        repeats=-1,
        next_run=timezone.now() + timedelta(seconds=30),
    )
    status, body = _readyz(client)
    assert status == 200, body
    assert body["checks"]["worker"]["status"] == "ok"
    assert body["checks"]["worker"]["detail"]["source"] == "schedules"
    Schedule.objects.filter(pk=schedule.pk).update(next_run=timezone.now() - timedelta(minutes=10))
    status, body = _readyz(client)
    assert status == 503
    assert body["checks"]["worker"]["status"] == "failed"
    assert "overdue" in body["checks"]["worker"]["error"]


@pytest.mark.redis
@pytest.mark.django_db
def test_with_shared_stats_the_worker_is_alive_while_a_cluster_reports(client, settings, redis_url):
    from django_q.brokers import get_broker
    from django_q.conf import Conf
    from django_q.signing import SignedPackage
    from django_q.status import Stat, Status

    settings.READYZ_EXPECT_WORKER = True
    # The ORM broker keeps cluster stats in the default cache: with Redis there, every process sees them.
    settings.CACHES = {"default": _redis_cache(redis_url, prefix=f"convo-tests-{uuid.uuid4().hex[:8]}")}
    status, body = _readyz(client)
    assert status == 503
    assert body["checks"]["worker"]["error"] == "no django-q2 cluster has reported in the last 3 s"

    # What a cluster's sentinel saves every half second (django_q.status.Stat.save).
    heartbeat = Status(pid=1234, cluster_id=uuid.uuid4())
    heartbeat.status = Conf.IDLE
    broker = get_broker()
    broker.set_stat(Stat.get_key(heartbeat.cluster_id), SignedPackage.dumps(heartbeat, True), 3)
    status, body = _readyz(client)
    assert status == 200, body
    assert body["checks"]["worker"]["detail"] == {"source": "cluster stats", "clusters": 1}
