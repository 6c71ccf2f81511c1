"""Sending answer deliveries: signed webhooks to a real local HTTP server, against the real
database. Retries, backoff, permanent failures, leases, and concurrent senders."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models import F
from django.db.models.functions import Now

from clustering.models import (
    AnswerDelivery,
    Cluster,
    ClusterMembership,
    ClusterStatus,
    DeliveryEndpoint,
    DeliveryStatus,
    JoinMethod,
)
from clustering.services.deliveries import delivery_fanout
from clustering.services.webhooks import (
    _claim,
    _Failure,
    _finish_delivered,
    _finish_failed,
    _post,
    address_is_public,
    deliveries_send_due,
    delivery_backoff_seconds,
    delivery_retry,
    webhook_signature,
    webhook_signature_verify,
)
from clustering.tasks import send_due_deliveries
from conversations.embeddings import get_embedder
from conversations.models import Channel, Message, Tenant
from conversations.services.conversations import conversation_soft_delete
from conversations.services.embedding_spaces import embedding_space_for
from convo.errors import Conflict
from tests.factories import ConversationFactory, MessageFactory, TenantFactory

pytestmark = pytest.mark.django_db

SECRET = "whsec_test-secret"


# --- a chat backend ----------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Received:
    headers: dict[str, str]  # lower-cased names
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver(ThreadingHTTPServer):
    """A webhook receiver on 127.0.0.1: answers each POST with the next scripted ``Reply`` (or
    ``default``) and records what it got."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: deque[Reply] = deque()
        self.default = Reply()
        self.received: list[Received] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/convo"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a sender that timed out closed the socket: writing the answer fails, as expected

    def delivery_ids(self) -> list[str]:
        """The Idempotency-Key of each request received, in order."""
        return [r.headers["idempotency-key"] for r in self.received]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            self.server.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
            reply = self.server.script.popleft() if self.server.script else self.server.default
        time.sleep(reply.delay)
        payload = b"{}"
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@contextmanager
def running_receiver(*, tls: tuple[str, str] | None = None) -> Iterator[Receiver]:
    """A ``Receiver``; with ``tls`` (certificate file, key file) it speaks https."""
    server = Receiver()
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as server:
        yield server


class Trickler:
    """An endpoint that reads the request, then sends its answer's status line and headers one
    byte every ``every`` seconds, for up to ``for_seconds`` (then the rest at once: a 200). Each
    byte comes well within any per-operation timeout: only a deadline on the whole request stops
    waiting for it sooner."""

    def __init__(self, *, every: float, for_seconds: float) -> None:
        self.every, self.for_seconds = every, for_seconds
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.requests = 0
        self.stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/hooks/convo"

    def serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5.0)
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                request += chunk
            self.requests += 1
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Slow: " + b"." * 200 + b"\r\n\r\n{}"
            ends = time.monotonic() + self.for_seconds
            try:
                for at in range(len(answer)):
                    if time.monotonic() >= ends or self.stopped.is_set():
                        conn.sendall(answer[at:])
                        return
                    conn.sendall(answer[at : at + 1])
                    time.sleep(self.every)
            except OSError:
                pass  # the sender gave up and closed the connection


@contextmanager
def trickling_endpoint(*, every: float = 0.2, for_seconds: float = 6.0) -> Iterator[Trickler]:
    server = Trickler(every=every, for_seconds=for_seconds)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopped.set()
        thread.join()
        server.listener.close()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for ``localhost`` only (not for 127.0.0.1), and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(autouse=True)
def delivery_settings(settings: Any) -> Any:
    settings.DELIVERY_TIMEOUT_SECONDS = 2.0
    settings.DELIVERY_LEASE_SECONDS = 30.0
    settings.DELIVERY_BACKOFF_SECONDS = 5.0
    settings.DELIVERY_BACKOFF_MAX_SECONDS = 3600.0
    settings.DELIVERY_MAX_ATTEMPTS = 3
    settings.DELIVERY_BATCH_SIZE = 50
    return settings


# --- records -----------------------------------------------------------------------------------------


def answered_cluster(
    tenant: Tenant, *, members: int = 2, answer: str = "We open at 9.", version: int = 1
) -> tuple[Cluster, list[Message]]:
    """An answered cluster of ``members`` messages (one user each), built row by row, with its
    answer fanned out into deliveries by the real ``delivery_fanout``."""
    space = embedding_space_for(embedder=get_embedder())
    messages = [
        MessageFactory(
            conversation=ConversationFactory(tenant=tenant, channel=Channel.WEB), tenant=tenant, text=f"open? {i}"
        )
        for i in range(members)
    ]
    cluster = Cluster.objects.create(
        tenant=tenant,
        space=space,
        vector_sum=[1.0] + [0.0] * (space.dimensions - 1),
        size=members,
        status=ClusterStatus.ANSWERED,
        answer=answer,
        answer_version=version,
        answered_by="user:moderator",
        representative=messages[0],
        representative_text=messages[0].text,
    )
    ClusterMembership.objects.bulk_create(
        ClusterMembership(
            message=m, cluster=cluster, tenant=tenant, similarity=1.0, method=JoinMethod.EXACT, text_key="0" * 32
        )
        for m in messages
    )
    assert delivery_fanout(cluster=cluster) == members
    return cluster, messages


def endpoint_for(tenant: Tenant, url: str, *, active: bool = True) -> DeliveryEndpoint:
    return DeliveryEndpoint.objects.create(tenant=tenant, url=url, secret=SECRET, is_active=active)


def make_due() -> None:
    """Move every pending delivery's next attempt into the past (time comes from the database)."""
    AnswerDelivery.objects.filter(status=DeliveryStatus.PENDING).update(next_attempt_at=Now() - timedelta(seconds=1))


def wait_of(delivery: AnswerDelivery) -> float:
    """How long after the database's now() the delivery's next attempt is, in whole seconds
    (rounded up: the time of this read is a little after the time it was scheduled at)."""
    wait = AnswerDelivery.objects.annotate(wait=F("next_attempt_at") - Now()).get(pk=delivery.pk).wait
    return math.ceil(wait.total_seconds())


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


# --- signing -----------------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"delivery_id":"x"}'
    header = webhook_signature(secret=SECRET, timestamp=1_700_000_000, body=body)
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert webhook_signature_verify(secret=SECRET, header=header, body=body, now=1_700_000_100)


@pytest.mark.parametrize(
    ("secret", "body", "now", "header_edit"),
    [
        ("whsec_other", b"{}", 1_700_000_000, None),  # wrong secret
        (SECRET, b"{} ", 1_700_000_000, None),  # body changed
        (SECRET, b"{}", 1_700_000_301, None),  # too old (replay)
        (SECRET, b"{}", 1_699_999_699, None),  # too far in the future
        (SECRET, b"{}", 1_700_000_000, lambda h: h.replace("t=", "t=1")),  # timestamp changed
        (SECRET, b"{}", 1_700_000_000, lambda h: h.split(",")[1]),  # no timestamp
        (SECRET, b"{}", 1_700_000_000, lambda h: h.split(",")[0]),  # no signature
        (SECRET, b"{}", 1_700_000_000, lambda h: "garbage"),
    ],
)
def test_signature_verification_refuses(secret: str, body: bytes, now: int, header_edit: Any) -> None:
    header = webhook_signature(secret=SECRET, timestamp=1_700_000_000, body=b"{}")
    if header_edit is not None:
        header = header_edit(header)
    assert not webhook_signature_verify(secret=secret, header=header, body=body, now=now)


def test_signature_verification_accepts_any_of_several_v1_entries() -> None:
    header = webhook_signature(secret=SECRET, timestamp=1_700_000_000, body=b"{}")
    both = f"t=1700000000,v1={'0' * 64},{header.split(',')[1]}"
    assert webhook_signature_verify(secret=SECRET, header=both, body=b"{}", now=1_700_000_000)


# --- sending -----------------------------------------------------------------------------------------


def test_due_deliveries_are_posted_signed_with_the_payload(tenant: Tenant, receiver: Receiver) -> None:
    endpoint_for(tenant, receiver.url)
    cluster, messages = answered_cluster(tenant, members=2, answer="We open at 9 — every day.")

    assert deliveries_send_due() == 2

    assert len(receiver.received) == 2
    deliveries = {d.pk: d for d in AnswerDelivery.objects.all()}
    for got in receiver.received:
        assert got.headers["content-type"] == "application/json"
        assert webhook_signature_verify(secret=SECRET, header=got.headers["convo-signature"], body=got.body)
        payload = got.json
        delivery = deliveries[next(pk for pk in deliveries if str(pk) == payload["delivery_id"])]
        message = next(m for m in messages if m.pk == delivery.message_id)
        assert got.headers["idempotency-key"] == payload["delivery_id"]
        assert payload == {
            "delivery_id": str(delivery.pk),
            "kind": "answer",
            "message_id": str(message.pk),
            "conversation_id": str(message.conversation_id),
            "user_id": message.conversation.external_user_id,
            "channel": "web",
            "cluster_id": str(cluster.pk),
            "answer": "We open at 9 — every day.",
            "answer_version": 1,
            "created_at": payload["created_at"],
        }
        assert datetime.fromisoformat(payload["created_at"]) == delivery.created_at
    for delivery in AnswerDelivery.objects.all():
        assert delivery.status == DeliveryStatus.DELIVERED
        assert delivery.delivered_at is not None and delivery.claimed_at is None
        assert delivery.attempts == 1 and delivery.last_error == ""


def test_a_second_run_sends_nothing(tenant: Tenant, receiver: Receiver) -> None:
    endpoint_for(tenant, receiver.url)
    answered_cluster(tenant, members=3)
    assert deliveries_send_due() == 3
    make_due()  # even with a due time in the past, a delivered row is never claimed

    assert deliveries_send_due() == 0
    assert send_due_deliveries() == 0
    assert len(receiver.received) == 3
    assert sorted(receiver.delivery_ids()) == sorted(
        str(pk) for pk in AnswerDelivery.objects.values_list("pk", flat=True)
    )


def test_500_is_retried_with_doubling_backoff_until_delivered(tenant: Tenant, receiver: Receiver) -> None:
    endpoint_for(tenant, receiver.url)
    answered_cluster(tenant, members=1)
    receiver.script.extend([Reply(500), Reply(500), Reply(200)])

    assert deliveries_send_due() == 1
    delivery = AnswerDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("pending", 1)
    assert delivery.last_error == "attempt 1: the endpoint answered 500"
    assert wait_of(delivery) == 5
    assert deliveries_send_due() == 0  # not due yet
    assert len(receiver.received) == 1

    make_due()
    assert deliveries_send_due() == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, wait_of(delivery)) == ("pending", 2, 10)

    make_due()
    assert deliveries_send_due() == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("delivered", 3, "")
    assert len(set(receiver.delivery_ids())) == 1 and len(receiver.received) == 3  # one delivery, one key


def test_backoff_doubles_and_is_capped(delivery_settings: Any) -> None:
    assert [delivery_backoff_seconds(attempts=n) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert delivery_backoff_seconds(attempts=11) == 3600  # 5 * 1024 = 5120, capped
    assert delivery_backoff_seconds(attempts=10_000) == 3600
    assert delivery_backoff_seconds(attempts=1, retry_after=120) == 120
    assert delivery_backoff_seconds(attempts=1, retry_after=99_999) == 3600


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured_and_the_endpoints_other_deliveries_wait(
    tenant: Tenant, receiver: Receiver, status: int
) -> None:
    endpoint_for(tenant, receiver.url)
    answered_cluster(tenant, members=3)
    receiver.script.append(Reply(status, headers={"Retry-After": "120"}))

    assert deliveries_send_due() == 3  # claimed; only the first was sent

    assert len(receiver.received) == 1
    tried = AnswerDelivery.objects.get(pk=receiver.delivery_ids()[0])
    assert (tried.status, tried.attempts, wait_of(tried)) == ("pending", 1, 120)
    assert tried.last_error == f"attempt 1: the endpoint answered {status}"
    for waiting in AnswerDelivery.objects.exclude(pk=tried.pk):  # handed back without spending an attempt
        assert (waiting.status, waiting.attempts, waiting.claimed_at, waiting.last_error) == ("pending", 0, None, "")
        assert wait_of(waiting) == 120

    make_due()
    assert deliveries_send_due() == 3
    assert AnswerDelivery.objects.filter(status="delivered").count() == 3
    assert len(receiver.received) == 4


def test_a_500_does_not_hold_back_the_endpoints_other_deliveries(tenant: Tenant, receiver: Receiver) -> None:
    endpoint_for(tenant, receiver.url)
    answered_cluster(tenant, members=2)
    receiver.script.append(Reply(500))  # one delivery's problem, not the endpoint's
    assert deliveries_send_due() == 2
    assert len(receiver.received) == 2
    assert sorted(AnswerDelivery.objects.values_list("status", flat=True)) == ["delivered", "pending"]


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(400, "failed"), (401, "failed"), (404, "failed"), (410, "failed"), (422, "failed"),
     (408, "pending"), (409, "pending"), (429, "pending"), (500, "pending"), (502, "pending"), (302, "pending")],
)  # fmt: skip
def test_4xx_other_than_408_409_429_fails_at_once(
    tenant: Tenant, receiver: Receiver, status: int, outcome: str
) -> None:
    endpoint_for(tenant, receiver.url)
    answered_cluster(tenant, members=1)
    receiver.script.append(Reply(status, headers={"Location": "http://elsewhere.invalid/"}))

    deliveries_send_due()

    delivery = AnswerDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == (outcome, 1)
    assert str(status) in delivery.last_error
    assert len(receiver.received) == 1  # a redirect is not followed
    make_due()
    deliveries_send_due()
    assert len(receiver.received) == (1 if outcome == "failed" else 2)


def test_it_gives_up_after_max_attempts(tenant: Tenant, receiver: Receiver) -> None:
    endpoint_for(tenant, receiver.url)
    answered_cluster(tenant, members=1)
    receiver.default = Reply(500)

    for _ in range(3):
        assert deliveries_send_due() == 1
        make_due()

    delivery = AnswerDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.claimed_at) == ("failed", 3, None)
    assert delivery.last_error == "attempt 3: the endpoint answered 500 (gave up after 3 attempts)"
    assert deliveries_send_due() == 0
    assert len(receiver.received) == 3


def test_unreachable_endpoints_are_retried(tenant: Tenant, receiver: Receiver, delivery_settings: Any) -> None:
    endpoint = endpoint_for(tenant, closed_port_url())
    answered_cluster(tenant, members=2)

    assert deliveries_send_due() == 2
    first, second = sorted(AnswerDelivery.objects.all(), key=lambda d: -d.attempts)
    assert (first.status, first.attempts) == ("pending", 1)
    assert first.last_error.startswith("attempt 1: could not reach the endpoint: ")
    assert (second.attempts, second.last_error) == (0, "")  # waits behind the first, attempt not spent

    delivery_settings.DELIVERY_TIMEOUT_SECONDS = 0.3
    receiver.default = Reply(delay=1.0)  # answers after the sender stopped waiting
    DeliveryEndpoint.objects.filter(pk=endpoint.pk).update(url=receiver.url)
    make_due()
    started = time.monotonic()
    deliveries_send_due()
    assert time.monotonic() - started < 1.0
    first.refresh_from_db()
    assert (first.status, first.attempts) == ("pending", 2)
    assert first.last_error == "attempt 2: could not reach the endpoint: timed out"


def test_the_others_still_wait_when_the_first_fails_for_good(tenant: Tenant) -> None:
    endpoint_for(tenant, closed_port_url())
    answered_cluster(tenant, members=2)
    head, other = AnswerDelivery.objects.order_by("id")
    AnswerDelivery.objects.filter(pk=head.pk).update(attempts=2)

    assert deliveries_send_due() == 2

    head.refresh_from_db()
    other.refresh_from_db()
    assert (head.status, head.attempts) == ("failed", 3)
    assert (other.status, other.attempts, wait_of(other)) == ("pending", 0, 20)


def test_an_expired_claim_is_claimed_again(tenant: Tenant, receiver: Receiver) -> None:
    """A sender killed mid-send leaves its claim behind; after the lease another sender takes it."""
    endpoint_for(tenant, receiver.url)
    answered_cluster(tenant, members=2)
    dead, live = AnswerDelivery.objects.order_by("id")
    AnswerDelivery.objects.filter(pk=dead.pk).update(attempts=1, claimed_at=Now() - timedelta(seconds=31))
    with connection.cursor() as cursor:  # a sender that is sending right now
        cursor.execute(
            "UPDATE clustering_answerdelivery SET attempts = 1, claimed_at = clock_timestamp() WHERE id = %s", [live.pk]
        )

    assert deliveries_send_due() == 1

    assert receiver.delivery_ids() == [str(dead.pk)]
    dead.refresh_from_db()
    live.refresh_from_db()
    assert (dead.status, dead.attempts) == ("delivered", 2)
    assert (live.status, live.attempts) == ("pending", 1) and live.claimed_at is not None


def test_a_claim_lost_on_the_last_attempt_fails_without_sending(tenant: Tenant, receiver: Receiver) -> None:
    endpoint_for(tenant, receiver.url)
    answered_cluster(tenant, members=1)
    AnswerDelivery.objects.update(attempts=3, claimed_at=Now() - timedelta(seconds=31))

    assert deliveries_send_due() == 1  # claimed, and failed there
    assert deliveries_send_due() == 0

    delivery = AnswerDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.claimed_at) == ("failed", 3, None)
    assert "lease expired" in delivery.last_error
    assert receiver.received == []


def test_a_stale_sender_cannot_record_an_outcome(tenant: Tenant, receiver: Receiver) -> None:
    endpoint_for(tenant, receiver.url)
    answered_cluster(tenant, members=1)
    [mine], _ = _claim(limit=10)
    with connection.cursor() as cursor:  # our lease ran out and another sender re-claimed the row
        cursor.execute("UPDATE clustering_answerdelivery SET claimed_at = clock_timestamp() WHERE id = %s", [mine.id])

    _finish_delivered(mine)
    _finish_failed(mine, _Failure("the endpoint answered 500"))
    _finish_failed(mine, _Failure("refused", permanent=True))

    delivery = AnswerDelivery.objects.get()
    assert (delivery.status, delivery.last_error, delivery.delivered_at) == ("pending", "", None)
    assert delivery.claimed_at is not None and delivery.claimed_at != mine.claimed_at


def test_a_claim_about_to_outlive_its_lease_is_handed_back_unsent(
    tenant: Tenant, receiver: Receiver, delivery_settings: Any
) -> None:
    delivery_settings.DELIVERY_LEASE_SECONDS = 1.0  # 0.95 s of it for POSTs (a 5% margin records the outcome)
    delivery_settings.DELIVERY_TIMEOUT_SECONDS = 0.4  # a POST may take 0.8 s: only the first fits
    endpoint_for(tenant, receiver.url)
    answered_cluster(tenant, members=3)
    receiver.default = Reply(delay=0.2)

    assert deliveries_send_due() == 3

    assert len(receiver.received) == 1
    assert AnswerDelivery.objects.filter(status="delivered").count() == 1
    for delivery in AnswerDelivery.objects.filter(status="pending"):
        assert (delivery.attempts, delivery.claimed_at, wait_of(delivery) <= 0) == (0, None, True)
    assert deliveries_send_due() == 2  # still due: the next run sends them


@pytest.mark.parametrize("lease", [4.0, 4.2])  # a request takes up to 4 s; the lease keeps a 5% margin
def test_lease_must_outlast_a_request(delivery_settings: Any, lease: float) -> None:
    from django.core.exceptions import ImproperlyConfigured

    delivery_settings.DELIVERY_LEASE_SECONDS = lease
    with pytest.raises(ImproperlyConfigured):
        deliveries_send_due()


# --- the deadline of one POST ------------------------------------------------------------------------


def test_a_trickling_endpoint_cannot_hold_a_post_past_its_deadline(tenant: Tenant, delivery_settings: Any) -> None:
    """Every header byte comes within the 0.5 s socket timeout, but the POST as a whole ends at
    its 1 s deadline (2 x the timeout): a retryable timeout, and the endpoint's other delivery waits."""
    delivery_settings.DELIVERY_TIMEOUT_SECONDS = 0.5
    with trickling_endpoint(every=0.2, for_seconds=6.0) as endpoint:
        endpoint_for(tenant, endpoint.url)
        answered_cluster(tenant, members=2)

        started = time.monotonic()
        assert deliveries_send_due() == 2
        elapsed = time.monotonic() - started

    assert 0.9 <= elapsed < 1.8, elapsed  # the deadline ended it, not a socket timeout, nor the endpoint
    assert endpoint.requests == 1
    tried, waiting = sorted(AnswerDelivery.objects.all(), key=lambda d: -d.attempts)
    assert (tried.status, tried.attempts, tried.claimed_at) == ("pending", 1, None)
    assert tried.last_error == "attempt 1: could not reach the endpoint: timed out"
    assert wait_of(tried) == 5
    assert (waiting.status, waiting.attempts, wait_of(waiting)) == ("pending", 0, 5)


def test_the_post_ends_by_the_deadline_it_is_given(tenant: Tenant) -> None:
    """The sender passes min(2 x timeout, what is left of the lease - margin): the POST keeps to
    it even when it is shorter than the socket timeout."""
    with trickling_endpoint(every=0.1, for_seconds=6.0) as endpoint:
        endpoint_for(tenant, endpoint.url)
        answered_cluster(tenant, members=1)
        [item], _ = _claim(limit=1)

        started = time.monotonic()
        failure = _post(item, timeout=5.0, deadline=started + 0.5)
        elapsed = time.monotonic() - started

    assert failure == _Failure("could not reach the endpoint: timed out", endpoint_down=True)
    assert 0.45 <= elapsed < 1.0, elapsed


def test_a_slow_host_name_lookup_counts_against_the_deadline(
    tenant: Tenant, delivery_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """getaddrinfo has no timeout of its own: a resolver that hangs must not hold the POST."""
    delivery_settings.DELIVERY_TIMEOUT_SECONDS = 0.5
    resolver_answers = threading.Event()
    real_getaddrinfo = socket.getaddrinfo

    def hanging_resolver(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "slow-dns.example":
            resolver_answers.wait(6.0)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging_resolver)
    endpoint_for(tenant, "http://slow-dns.example/hooks/convo")
    answered_cluster(tenant, members=1)

    started = time.monotonic()
    try:
        assert deliveries_send_due() == 1
    finally:
        elapsed = time.monotonic() - started
        resolver_answers.set()

    assert elapsed < 1.8, elapsed
    delivery = AnswerDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("pending", 1)
    assert delivery.last_error == "attempt 1: could not reach the endpoint: timed out"


def test_https_endpoints_are_verified_against_the_urls_host(
    tenant: Tenant, tls_files: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, _ = tls_files
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # trust the test certificate (read per connection)
    with running_receiver(tls=tls_files) as receiver:
        port = receiver.server_address[1]
        endpoint_for(tenant, f"https://localhost:{port}/hooks/convo")
        answered_cluster(tenant, members=1)

        assert deliveries_send_due() == 1

        [got] = receiver.received
        assert webhook_signature_verify(secret=SECRET, header=got.headers["convo-signature"], body=got.body)
        assert AnswerDelivery.objects.get().status == "delivered"

        # The same server by its address: the certificate names localhost only, so it is refused.
        DeliveryEndpoint.objects.filter(tenant=tenant).update(url=f"https://127.0.0.1:{port}/hooks/convo")
        answered_cluster(tenant, members=1)
        assert deliveries_send_due() == 1

    refused = AnswerDelivery.objects.get(status="pending")
    assert refused.attempts == 1 and "CERTIFICATE_VERIFY_FAILED" in refused.last_error
    assert len(receiver.received) == 1


def test_sending_refuses_to_run_inside_a_transaction(tenant: Tenant) -> None:
    with transaction.atomic(), pytest.raises(RuntimeError):  # no transaction may be held over HTTP
        deliveries_send_due()


def test_only_tenants_with_an_active_endpoint_are_pushed(tenant: Tenant, receiver: Receiver) -> None:
    pulling, paused = TenantFactory(), TenantFactory()
    endpoint_for(tenant, receiver.url)
    endpoint_for(paused, receiver.url, active=False)
    answered_cluster(tenant, members=1)
    answered_cluster(pulling, members=2)
    answered_cluster(paused, members=2)

    assert deliveries_send_due() == 1
    assert [r.json["delivery_id"] for r in receiver.received] == [str(AnswerDelivery.objects.get(tenant=tenant).pk)]
    assert AnswerDelivery.objects.filter(status="pending").exclude(tenant=tenant).count() == 4
    assert not AnswerDelivery.objects.exclude(tenant=tenant).filter(attempts__gt=0).exists()


def test_suggestions_carry_their_kind(tenant: Tenant, receiver: Receiver) -> None:
    from clustering.services.deliveries import delivery_suggest

    endpoint_for(tenant, receiver.url)
    cluster, _ = answered_cluster(tenant, members=1)
    late = MessageFactory(conversation=ConversationFactory(tenant=tenant), tenant=tenant, text="open?")
    ClusterMembership.objects.create(
        message=late, cluster=cluster, tenant=tenant, similarity=0.9, method=JoinMethod.VECTOR, text_key="1" * 32
    )
    assert delivery_suggest(cluster_id=cluster.pk, message_ids=[late.pk]) == 1

    deliveries_send_due()

    kinds = {r.json["message_id"]: r.json["kind"] for r in receiver.received}
    assert kinds[str(late.pk)] == "suggestion"
    assert sorted(kinds.values()) == ["answer", "suggestion"]


def test_the_task_drains_batch_after_batch(tenant: Tenant, receiver: Receiver, delivery_settings: Any) -> None:
    delivery_settings.DELIVERY_BATCH_SIZE = 2
    endpoint_for(tenant, receiver.url)
    answered_cluster(tenant, members=5)

    assert send_due_deliveries() == 5

    assert AnswerDelivery.objects.filter(status="delivered").count() == 5
    assert len(set(receiver.delivery_ids())) == len(receiver.received) == 5


def test_the_sender_is_scheduled_every_minute() -> None:
    from conversations.management.commands.convo_schedules import SCHEDULES

    entry = next(e for e in SCHEDULES.values() if e["func"] == "clustering.tasks.send_due_deliveries")
    assert entry["minutes"] == 1


# --- retry -------------------------------------------------------------------------------------------


def test_retry_puts_a_failed_delivery_back_with_fresh_attempts(tenant: Tenant, receiver: Receiver) -> None:
    endpoint_for(tenant, receiver.url)
    answered_cluster(tenant, members=1)
    receiver.script.append(Reply(400))
    deliveries_send_due()
    failed = AnswerDelivery.objects.get()
    assert failed.status == "failed"

    retried = delivery_retry(delivery=failed)

    assert (retried.status, retried.attempts, retried.last_error, retried.claimed_at) == ("pending", 0, "", None)
    assert wait_of(retried) <= 0
    assert deliveries_send_due() == 1
    retried.refresh_from_db()
    assert (retried.status, retried.attempts) == ("delivered", 1)
    with pytest.raises(Conflict):  # a delivered delivery is never sent again
        delivery_retry(delivery=retried)


def test_retry_refuses_pending_and_superseded_deliveries(tenant: Tenant) -> None:
    cluster, _ = answered_cluster(tenant, members=1)
    pending = AnswerDelivery.objects.get()
    with pytest.raises(Conflict):
        delivery_retry(delivery=pending)

    Cluster.objects.filter(pk=cluster.pk).update(answer="Now 10.", answer_version=2)
    cluster.refresh_from_db()
    delivery_fanout(cluster=cluster)  # the old answer's pending delivery is superseded (failed)
    old = AnswerDelivery.objects.get(answer_version=1)
    assert old.status == "failed"
    with pytest.raises(Conflict, match="superseded"):
        delivery_retry(delivery=old)


def test_retry_refuses_a_delivery_whose_conversation_was_deleted(tenant: Tenant) -> None:
    _, messages = answered_cluster(tenant, members=2)
    conversation_soft_delete(conversation=messages[0].conversation)  # fails its pending delivery
    gone = AnswerDelivery.objects.get(message=messages[0])
    assert (gone.status, gone.last_error) == ("failed", "the conversation was deleted")

    with pytest.raises(Conflict, match="conversation has been deleted"):
        delivery_retry(delivery=gone)

    gone.refresh_from_db()
    assert (gone.status, gone.last_error) == ("failed", "the conversation was deleted")


def test_retry_refuses_a_delivery_whose_message_left_the_cluster(tenant: Tenant) -> None:
    cluster, messages = answered_cluster(tenant, members=2)
    other, _ = answered_cluster(tenant, members=1, answer="Somewhere else.")
    AnswerDelivery.objects.update(status=DeliveryStatus.FAILED, last_error="attempt 8: the endpoint answered 500")
    moved, stayed = (AnswerDelivery.objects.get(message=m, cluster=cluster) for m in messages)
    ClusterMembership.objects.filter(message=messages[0]).update(cluster=other)  # moved by a moderator

    with pytest.raises(Conflict, match="no longer in this delivery's cluster"):
        delivery_retry(delivery=moved)
    moved.refresh_from_db()
    assert moved.status == "failed"

    assert delivery_retry(delivery=stayed).status == "pending"  # its message is still a member


# --- concurrency -------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_senders_never_send_one_delivery_twice(receiver: Receiver) -> None:
    tenant = TenantFactory()
    answered_cluster(tenant, members=40)  # no endpoint yet: the on-commit kick sends nothing
    endpoint_for(tenant, receiver.url)
    receiver.default = Reply(delay=0.01)
    senders = 4
    barrier = threading.Barrier(senders)
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            barrier.wait()
            while deliveries_send_due(limit=3):
                pass
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)
        finally:
            connection.close()  # each thread has its own connection

    threads = [threading.Thread(target=sender) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    keys = receiver.delivery_ids()
    assert len(keys) == len(set(keys)) == 40
    assert set(keys) == {str(pk) for pk in AnswerDelivery.objects.values_list("pk", flat=True)}
    assert set(AnswerDelivery.objects.values_list("status", "attempts")) == {("delivered", 1)}


# --- private addresses (SSRF) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata services
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("fe80::1%eth0", False),
        ("fd00::1", False),
    ],
)
def test_only_global_unicast_addresses_are_public(address: str, public: bool) -> None:
    assert address_is_public(address) is public


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_webhook_to_a_private_address_fails_for_good_unsent(
    tenant: Tenant, receiver: Receiver, delivery_settings: Any, host: str
) -> None:
    delivery_settings.DELIVERY_ALLOW_PRIVATE_ADDRESSES = False
    endpoint_for(tenant, receiver.url.replace("127.0.0.1", host))
    answered_cluster(tenant, members=1)

    deliveries_send_due()

    delivery = AnswerDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert "not a public address" in delivery.last_error
    assert receiver.received == []


def test_a_proxy_the_operator_set_is_used_whatever_its_address(
    tenant: Tenant, receiver: Receiver, delivery_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through HTTP_PROXY, convo connects to the proxy (here on 127.0.0.1, as a sidecar would be),
    which enforces its own egress rules; the endpoint's host is never looked up by convo."""
    delivery_settings.DELIVERY_ALLOW_PRIVATE_ADDRESSES = False
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{receiver.server_address[1]}")
    endpoint_for(tenant, "http://hooks.example.invalid/convo")
    answered_cluster(tenant, members=1)

    deliveries_send_due()

    assert AnswerDelivery.objects.get().status == "delivered"
    assert len(receiver.received) == 1


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://127.0.0.1:8000/hook", True),
        ("http://localhost/hook", True),
        ("https://[::1]/hook", True),
        ("http://169.254.169.254/latest/meta-data", True),
        ("https://hooks.example.com/convo", False),  # a name: checked on each delivery's address
        ("https://93.184.215.14/convo", False),
    ],
)
def test_a_private_webhook_url_is_refused_when_set(
    tenant: Tenant, delivery_settings: Any, url: str, refused: bool
) -> None:
    from clustering.services.webhooks import delivery_endpoint_set
    from convo.errors import ServiceError

    delivery_settings.DELIVERY_ALLOW_PRIVATE_ADDRESSES = False
    if refused:
        with pytest.raises(ServiceError) as caught:
            delivery_endpoint_set(tenant=tenant, url=url)
        assert "public address" in caught.value.fields["url"][0]
    else:
        assert delivery_endpoint_set(tenant=tenant, url=url).endpoint.url == url
