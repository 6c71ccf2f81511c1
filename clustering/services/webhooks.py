"""Sending answer deliveries to the tenant's chat backend (push), and the pull side.

Push: a tenant with an active ``DeliveryEndpoint`` gets each delivery POSTed as signed JSON
(docs/delivery.md). The pending rows are the queue (ARCHITECTURE.md, decision 1): a batch is
claimed in a short transaction with ``FOR UPDATE SKIP LOCKED`` (two senders never take one row),
which stamps ``claimed_at`` and counts the attempt; the POSTs happen outside any transaction;
each outcome is written by an UPDATE that matches our ``claimed_at``, so a sender whose lease ran
out (and whose row another sender re-claimed) can never mark it twice. Only ``pending`` rows are
ever claimed, so a delivered row is never sent again.

Delivery is at least once: a POST that reached the backend but whose answer was lost (timeout,
crash before the outcome was written) is sent again with the same ``Idempotency-Key`` (the
delivery id), which the backend uses to drop the repeat.

Pull: a tenant without an active endpoint lists its pending deliveries through the API and
acknowledges them (``delivery_acknowledge``); acknowledged means delivered.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import io
import ipaddress
import json
import logging
import secrets
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.db.models import QuerySet
from django.db.models.functions import Now

from clustering.models import AnswerDelivery, Cluster, ClusterMembership, DeliveryEndpoint, DeliveryStatus
from clustering.services.deliveries import delivery_kick_on_commit
from clustering.services.locking import tenants_clustering_lock
from conversations.embeddings.http import retry_after_seconds
from conversations.models import Conversation, Message, Tenant
from convo.errors import Conflict, NotFound, ServiceError

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "Convo-Signature"
#: How old a signature's timestamp may be before ``webhook_signature_verify`` refuses it (replays).
SIGNATURE_TOLERANCE_SECONDS = 300
#: Answers meaning "this request will never succeed as it is": fail at once. 408, 409 and 429
#: are 4xx too, but say "later" (timeout, conflict with a concurrent request, rate limit).
_RETRYABLE_4XX = frozenset({408, 409, 429})
#: Answers meaning "the endpoint as a whole is unavailable": the rest of its batch waits.
_ENDPOINT_DOWN = frozenset({429, 502, 503, 504})
_ERROR_CHARS = 500
#: The part of the lease a sender keeps in hand after a POST's deadline, to record its outcome
#: before another sender may re-claim the delivery.
LEASE_MARGIN_FRACTION = 0.05
#: Host name lookups running at once in one process (each in a thread of its own, since
#: ``getaddrinfo`` has no timeout); one more waits for a slot, within its POST's deadline.
_RESOLVER_SLOTS = threading.BoundedSemaphore(8)


# --- signing ---------------------------------------------------------------------------------------


def webhook_signature(*, secret: str, timestamp: int, body: bytes) -> str:
    """The ``Convo-Signature`` header value: ``t=<timestamp>,v1=<hex HMAC-SHA256>``, the MAC of
    ``secret`` over ``b"<timestamp>." + body`` (the raw request body, byte for byte). Signing the
    timestamp with the body lets a receiver refuse replays of an old request."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def webhook_signature_verify(
    *,
    secret: str,
    header: str,
    body: bytes,
    tolerance_seconds: float = SIGNATURE_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Whether ``header`` (a ``Convo-Signature`` value) signs ``body`` with ``secret`` and is at
    most ``tolerance_seconds`` old (or early). Several ``v1=`` entries are accepted (any may
    match), so the scheme can carry two signatures while a secret is rotated. Constant time."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isascii() and value.isdecimal():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_seconds:
        return False
    expected = webhook_signature(secret=secret, timestamp=timestamp, body=body).partition(",v1=")[2]
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


# --- sending ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimedDelivery:
    id: UUID
    tenant_id: int
    claimed_at: datetime  # our claim; every write of the outcome matches it
    attempts: int  # including this one
    url: str
    secret: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class _Failure:
    reason: str
    permanent: bool = False
    retry_after: float | None = None
    endpoint_down: bool = False  # the endpoint, not this delivery, is the problem


def deliveries_send_due(*, limit: int | None = None) -> int:
    """Claim up to ``limit`` (default ``DELIVERY_BATCH_SIZE``) due deliveries of tenants with an
    active endpoint and POST each one. Returns how many were claimed (sent, failed, or handed
    back unsent); 0 means nothing is due. Must not run inside a transaction (the claim is
    ``durable``): no database transaction is ever held open across an HTTP request.

    Three things bound one run. Each POST has a hard deadline, ``2 * DELIVERY_TIMEOUT_SECONDS``
    from its start, host name lookup included, however slowly the endpoint trickles its answer
    (``_post``). An endpoint that times out, refuses connections or says it is unavailable
    (429/502/503/504) is not tried again in this run: the rest of its batch is handed back,
    without spending an attempt, to wait as long as the failed one. And a delivery whose claim
    would run out before its POST's deadline (plus a margin to record the outcome) is handed
    back unsent, so another sender that re-claims it after the lease never races us."""
    timeout: float = settings.DELIVERY_TIMEOUT_SECONDS
    lease: float = settings.DELIVERY_LEASE_SECONDS
    budget = 2 * timeout  # the longest one POST may take, from the host name lookup to the answer's headers
    margin = lease * LEASE_MARGIN_FRACTION  # kept in hand to record the outcome within the lease
    if lease - margin <= budget:
        raise ImproperlyConfigured(
            "DELIVERY_LEASE_SECONDS must be more than twice DELIVERY_TIMEOUT_SECONDS, "
            f"plus {LEASE_MARGIN_FRACTION:.0%} of the lease"
        )
    started = time.monotonic()  # before the claim: the lease is counted from no later than this
    batch, lost = _claim(limit=limit or settings.DELIVERY_BATCH_SIZE)
    waiting: dict[int, float] = {}  # tenant -> delay its endpoint asked for in this run
    for item in batch:
        if item.tenant_id in waiting:
            _hand_back(item, delay=waiting[item.tenant_id])
            continue
        now = time.monotonic()
        lease_left = lease - (now - started) - margin
        if lease_left < budget:
            _hand_back(item, delay=0.0)
            continue
        failure = _post(item, timeout=timeout, deadline=now + min(budget, lease_left))
        if failure is None:
            _finish_delivered(item)
            continue
        delay = _finish_failed(item, failure)
        if failure.endpoint_down:  # even when this one has just failed for good, the others wait
            waiting[item.tenant_id] = delay or delivery_backoff_seconds(
                attempts=item.attempts, retry_after=failure.retry_after
            )
    return len(batch) + lost


def _claim(*, limit: int) -> tuple[list[ClaimedDelivery], int]:
    """Take due deliveries: pending, ``next_attempt_at`` passed, not claimed or claimed longer than
    the lease ago (their sender died). One that was claimed for its last attempt and lost ends
    ``failed`` here instead of being sent again. Returns the claims to send, and how many were
    failed that way."""
    max_attempts: int = settings.DELIVERY_MAX_ATTEMPTS
    deliveries, endpoints = AnswerDelivery._meta.db_table, DeliveryEndpoint._meta.db_table
    messages, conversations = Message._meta.db_table, Conversation._meta.db_table
    # statement_timestamp() is what Django's Now() writes next_attempt_at with (now() would be the
    # start of an enclosing transaction). Driven from the active endpoints (LATERAL, on the
    # tenant/status index) rather than from all due rows: pull-mode tenants may keep large
    # pending backlogs that a sender must not scan.
    with transaction.atomic(durable=True), connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH picked AS (
                SELECT p.id FROM {endpoints} AS e
                CROSS JOIN LATERAL (
                    SELECT d.id, d.next_attempt_at FROM {deliveries} AS d
                     WHERE d.tenant_id = e.tenant_id AND d.status = 'pending'
                       AND d.next_attempt_at <= statement_timestamp()
                       AND (d.claimed_at IS NULL
                            OR d.claimed_at < statement_timestamp() - make_interval(secs => %(lease)s))
                     ORDER BY d.next_attempt_at, d.id LIMIT %(limit)s
                     FOR UPDATE SKIP LOCKED
                ) AS p
                WHERE e.is_active
                ORDER BY p.next_attempt_at, p.id LIMIT %(limit)s
            )
            UPDATE {deliveries} AS d
               SET status = CASE WHEN d.attempts >= %(max)s THEN 'failed' ELSE 'pending' END,
                   last_error = CASE WHEN d.attempts >= %(max)s
                       THEN 'the sender stopped during the last attempt (lease expired)' ELSE d.last_error END,
                   claimed_at = CASE WHEN d.attempts >= %(max)s THEN NULL ELSE clock_timestamp() END,
                   attempts = CASE WHEN d.attempts >= %(max)s THEN d.attempts ELSE d.attempts + 1 END
              FROM picked, {messages} AS m, {conversations} AS c, {endpoints} AS e
             WHERE d.id = picked.id AND m.id = d.message_id AND c.id = m.conversation_id
               AND e.tenant_id = d.tenant_id
            RETURNING d.id, d.tenant_id, d.status, d.claimed_at, d.attempts, e.url, e.secret, d.kind, d.message_id,
                      m.conversation_id, c.external_user_id, c.channel, d.cluster_id, d.answer, d.answer_version,
                      d.created_at, d.next_attempt_at
            """,
            {"lease": settings.DELIVERY_LEASE_SECONDS, "limit": limit, "max": max_attempts},
        )
        rows = cursor.fetchall()
    claimed: list[ClaimedDelivery] = []
    for row in sorted(rows, key=lambda r: (r[16], r[0])):  # RETURNING has no order: send oldest due first
        (id_, tenant_id, status, claimed_at, attempts, url, secret, kind, message_id, conversation_id, user_id,
         channel, cluster_id, answer, answer_version, created_at, _) = row  # fmt: skip
        if status != DeliveryStatus.PENDING:
            logger.warning("delivery %s failed: its last attempt's sender stopped", id_)
            continue
        payload = {
            "delivery_id": str(id_),
            "kind": kind,
            "message_id": str(message_id),
            "conversation_id": str(conversation_id),
            "user_id": user_id,
            "channel": channel,
            "cluster_id": str(cluster_id),
            "answer": answer,
            "answer_version": answer_version,
            "created_at": created_at.isoformat(),
        }
        claimed.append(ClaimedDelivery(id_, tenant_id, claimed_at, attempts, url, secret, payload))
    return claimed, len(rows) - len(claimed)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx is answered as it is (a failure): the signed body is never re-sent elsewhere


def webhook_body(payload: dict[str, Any]) -> bytes:
    """The exact bytes POSTed (and signed): compact JSON, UTF-8."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _post(item: ClaimedDelivery, *, timeout: float, deadline: float) -> _Failure | None:
    """POST one delivery; None when the endpoint answered 2xx. Each socket operation waits at
    most ``timeout``, and the whole request (host name lookup, connect, TLS, sending, reading
    the answer's status and headers) ends by ``deadline`` (``time.monotonic()``) whatever the
    endpoint does: past it, it is a timeout."""
    body = webhook_body(item.payload)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "convo-webhooks",
        "Idempotency-Key": str(item.id),
        SIGNATURE_HEADER: webhook_signature(secret=item.secret, timestamp=int(time.time()), body=body),
    }
    request = urllib.request.Request(item.url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        try:
            # Built per request (cheap): HTTP(S)_PROXY / NO_PROXY are read when it runs, not at import.
            opener = urllib.request.build_opener(
                urllib.request.ProxyHandler(),
                _NoRedirect(),
                _DeadlineHTTPHandler(deadline=deadline),
                _DeadlineHTTPSHandler(deadline=deadline),
            )
            with opener.open(request, timeout=timeout) as response:
                status, response_headers = response.status, response.headers
        except urllib.error.HTTPError as error:
            with error:
                status, response_headers = error.code, error.headers
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError and timeouts are OSErrors
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, PrivateAddressRefused):  # it will not become public by waiting
            return _Failure(f"refused: {reason}", permanent=True)
        described = "timed out" if isinstance(reason, TimeoutError) else f"{type(reason).__name__}: {reason}"
        return _Failure(f"could not reach the endpoint: {described}", endpoint_down=True)
    if 200 <= status < 300:
        return None
    # The body is not quoted: the URL is the tenant's, and what it answers must not leak back
    # through last_error (an endpoint pointed at an internal service would otherwise read it).
    if 400 <= status < 500 and status not in _RETRYABLE_4XX:
        return _Failure(f"the endpoint refused the delivery ({status})", permanent=True)
    retry_after = retry_after_seconds(response_headers) if status in (429, 503) else None
    return _Failure(f"the endpoint answered {status}", retry_after=retry_after, endpoint_down=status in _ENDPOINT_DOWN)


# --- a POST with a deadline --------------------------------------------------------------------------
# urllib's timeout is per socket operation, and the host name lookup has none: an endpoint that
# sends its answer a byte at a time, or a slow DNS server, would keep one POST open for as long
# as it likes, past the claim's lease. These connections (the handlers urllib uses for http and
# https, proxies and CONNECT tunnels included) resolve the host in a bounded lookup, connect to
# the address found, and before every read and write shrink the socket's timeout to what is left
# of the deadline (TLS handshakes honour the socket timeout as a whole). No thread ever touches a
# socket another one is using.


def _time_left(deadline: float, timeout: float) -> float:
    """The timeout for the next socket operation: ``timeout``, or less as the deadline nears.
    ``TimeoutError`` once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return min(left, timeout)


def _resolve(host: str, port: int, *, deadline: float) -> list[tuple[Any, ...]]:
    """``getaddrinfo`` for a TCP connection, given up on (``TimeoutError``) at ``deadline``.
    The lookup runs in a daemon thread (getaddrinfo cannot be interrupted); one that is given up
    on finishes in the background, still holding its slot, so a resolver that hangs can tie up
    at most ``_RESOLVER_SLOTS`` threads. An IP address is not looked up."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    if not _RESOLVER_SLOTS.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise TimeoutError("timed out")
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def lookup() -> None:
        try:
            outcome["addresses"] = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except Exception as exc:  # handed to the caller, if it is still waiting
            outcome["error"] = exc
        finally:
            _RESOLVER_SLOTS.release()
            done.set()

    threading.Thread(target=lookup, name="convo-webhook-dns", daemon=True).start()
    if not done.wait(max(0.0, deadline - time.monotonic())):
        raise TimeoutError("timed out")
    if "addresses" not in outcome:
        raise outcome.get("error") or OSError(f"could not look up {host}")
    addresses: list[tuple[Any, ...]] = outcome["addresses"]
    return addresses


class PrivateAddressRefused(OSError):
    """The endpoint's host is, or resolves to, an address webhooks may not reach."""


def address_is_public(address: str) -> bool:
    """Whether ``address`` (an IP) is a global unicast address: not loopback, private, link-local
    (cloud metadata services live there), shared, multicast, reserved or unspecified."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 scope ("%eth0") is not part of it
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _connect(host: str, port: int, *, timeout: float, deadline: float, public_only: bool = False) -> socket.socket:
    """A TCP connection to ``host`` (each address it resolves to in turn), by ``deadline``.
    With ``public_only``, only to addresses ``address_is_public`` accepts: the check is on the
    address connected to, so a name that resolves differently later (DNS rebinding) gains nothing."""
    error: OSError | None = None
    resolved = _resolve(host, port, deadline=deadline)
    if public_only:
        resolved = [entry for entry in resolved if address_is_public(entry[4][0])]
        if not resolved:
            raise PrivateAddressRefused(
                f"{host} is not a public address (webhooks may not reach private networks; "
                "DELIVERY_ALLOW_PRIVATE_ADDRESSES)"
            )
    for family, kind, proto, _, address in resolved:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(_time_left(deadline, timeout))
            sock.connect(address)
        except OSError as exc:
            sock.close()
            error = exc
            if isinstance(exc, TimeoutError) and time.monotonic() >= deadline:
                break
            continue
        if family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise error or OSError(f"no address found for {host}")


class _DeadlineReader(io.RawIOBase):
    """The socket's reading side, each read waiting at most until the deadline."""

    def __init__(self, sock: socket.socket, *, timeout: float, deadline: float) -> None:
        super().__init__()
        self._sock, self._timeout, self._deadline = sock, timeout, deadline
        self._raw = sock.makefile("rb", buffering=0)  # keeps the socket open until this is closed

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._sock.settimeout(_time_left(self._deadline, self._timeout))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _DeadlineSocket:
    """What ``http.client`` uses of a connected socket (``sendall``, ``makefile``, ``close``),
    with every operation bounded by the deadline."""

    def __init__(self, sock: socket.socket, *, timeout: float, deadline: float) -> None:
        self.sock, self._timeout, self._deadline = sock, timeout, deadline

    def sendall(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        while view:  # send() rather than sendall(): an SSL socket's sendall waits per chunk
            self.sock.settimeout(_time_left(self._deadline, self._timeout))
            view = view[self.sock.send(view) :]

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        if mode != "rb":
            raise ValueError("only reading is bounded")
        return io.BufferedReader(_DeadlineReader(self.sock, timeout=self._timeout, deadline=self._deadline))

    def close(self) -> None:
        self.sock.close()


def _connect_bounded(connection: http.client.HTTPConnection, *, deadline: float) -> tuple[socket.socket, float]:
    """``HTTPConnection.connect``, within the deadline: to ``connection.host`` (the proxy, when
    there is one), then through the CONNECT tunnel urllib set up for https through a proxy, whose
    answer is read within the deadline too. Returns the TCP socket and the per-operation timeout."""
    timeout = connection.timeout if isinstance(connection.timeout, int | float) else 60.0
    # A proxy the operator configured is trusted to enforce its own egress rules; a direct
    # connection to the tenant's host must be to a public address.
    direct = connection.host.strip("[]").lower() == getattr(connection, "endpoint_host", None)
    public_only = direct and not settings.DELIVERY_ALLOW_PRIVATE_ADDRESSES
    raw = _connect(connection.host, connection.port, timeout=timeout, deadline=deadline, public_only=public_only)
    connection.sock = _DeadlineSocket(raw, timeout=timeout, deadline=deadline)
    if connection._tunnel_host:  # type: ignore[attr-defined]
        connection._tunnel()  # type: ignore[attr-defined]
    return raw, timeout


class _DeadlineHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, deadline: float, endpoint_host: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline, self.endpoint_host = deadline, endpoint_host

    def connect(self) -> None:
        _connect_bounded(self, deadline=self.deadline)


class _DeadlineHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, deadline: float, endpoint_host: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline, self.endpoint_host = deadline, endpoint_host

    def connect(self) -> None:
        raw, timeout = _connect_bounded(self, deadline=self.deadline)
        # The handshake as a whole waits at most the socket's timeout. The certificate is checked
        # against the URL's host name (the tunnel's, through a proxy), as http.client does. On a
        # failure urllib closes the connection, and with it the socket.
        raw.settimeout(_time_left(self.deadline, timeout))
        server_hostname = self._tunnel_host or self.host  # type: ignore[attr-defined]
        tls = self._context.wrap_socket(raw, server_hostname=server_hostname)  # type: ignore[attr-defined]
        self.sock = _DeadlineSocket(tls, timeout=timeout, deadline=self.deadline)


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, *, deadline: float) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(
            _DeadlineHTTPConnection,  # type: ignore[arg-type]
            req,
            deadline=self._deadline,
            endpoint_host=_endpoint_host(req),
        )


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, *, deadline: float) -> None:
        super().__init__()
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(
            _DeadlineHTTPSConnection,  # type: ignore[arg-type]
            req,
            deadline=self._deadline,
            endpoint_host=_endpoint_host(req),
        )


def _endpoint_host(req: urllib.request.Request) -> str:
    """The URL's own host, whatever proxy the request goes through."""
    return (urlsplit(req.full_url).hostname or "").lower()


def _mine(item: ClaimedDelivery) -> QuerySet[AnswerDelivery]:
    """The delivery, only while the claim is still this sender's (a stale sender matches nothing)."""
    return AnswerDelivery.objects.filter(pk=item.id, status=DeliveryStatus.PENDING, claimed_at=item.claimed_at)


def _finish_delivered(item: ClaimedDelivery) -> None:
    if not _mine(item).update(status=DeliveryStatus.DELIVERED, delivered_at=Now(), claimed_at=None, last_error=""):
        logger.info("delivery %s was sent, but its claim was no longer ours (acknowledged or re-claimed)", item.id)


def _finish_failed(item: ClaimedDelivery, failure: _Failure) -> float | None:
    """Schedule the next attempt, or fail the delivery for good. Returns the delay until the next
    attempt (None when it failed for good)."""
    max_attempts: int = settings.DELIVERY_MAX_ATTEMPTS
    error = f"attempt {item.attempts}: {failure.reason}"[:_ERROR_CHARS]
    if failure.permanent or item.attempts >= max_attempts:
        if not failure.permanent:
            error = f"{error} (gave up after {item.attempts} attempts)"[:_ERROR_CHARS]
        _mine(item).update(status=DeliveryStatus.FAILED, claimed_at=None, last_error=error)
        logger.warning("delivery %s failed: %s", item.id, error)
        return None
    delay = delivery_backoff_seconds(attempts=item.attempts, retry_after=failure.retry_after)
    # The time comes from the database (Now()), like every other time the queue compares.
    _mine(item).update(next_attempt_at=Now() + timedelta(seconds=delay), claimed_at=None, last_error=error)
    logger.info("delivery %s: %s; next attempt in %.0fs", item.id, error, delay)
    return delay


def delivery_backoff_seconds(*, attempts: int, retry_after: float | None = None) -> float:
    """The wait after failed attempt number ``attempts`` (1-based): ``DELIVERY_BACKOFF_SECONDS``
    doubling per attempt, or the endpoint's ``Retry-After`` when it sent one; never more than
    ``DELIVERY_BACKOFF_MAX_SECONDS``."""
    cap: float = settings.DELIVERY_BACKOFF_MAX_SECONDS
    if retry_after is not None:
        return min(retry_after, cap)
    base: float = settings.DELIVERY_BACKOFF_SECONDS
    return min(base * 2.0 ** min(attempts - 1, 62), cap)


def _hand_back(item: ClaimedDelivery, *, delay: float) -> None:
    """Release a claim that was not sent: the attempt is given back."""
    _mine(item).update(
        claimed_at=None,
        attempts=item.attempts - 1,
        next_attempt_at=Now() + timedelta(seconds=delay),
    )


# --- retry, pull, endpoints ------------------------------------------------------------------------


@transaction.atomic
def delivery_retry(*, delivery: AnswerDelivery) -> AnswerDelivery:
    """Send a failed delivery again: back to ``pending``, due now, with its attempts reset.
    ``Conflict`` when it is not failed (a delivered one is never sent twice; a pending one is on
    its way), when the cluster has been answered again since (the member has a delivery of the
    newer answer; the old one must not follow it), when the message's conversation has been
    deleted, or when the message is no longer a member of the delivery's cluster (removed,
    split off or merged away: the answer is not its answer any more).

    The checks run under the tenant's clustering lock, which every change of membership holds
    until it commits (deleting a conversation takes its messages out of their clusters under it),
    so none of them can go stale before this transaction commits."""
    tenant_id = AnswerDelivery.objects.filter(pk=delivery.pk).values_list("tenant_id", flat=True).first()
    if tenant_id is None:
        raise NotFound("Delivery not found.")
    tenants_clustering_lock(tenant_ids=[tenant_id])
    locked = AnswerDelivery.objects.select_for_update().get(pk=delivery.pk)
    if locked.status != DeliveryStatus.FAILED:
        raise Conflict(f"Only a failed delivery can be retried; this one is {locked.status}.")
    current = Cluster.objects.filter(pk=locked.cluster_id).values_list("answer_version", flat=True).first()
    if current is not None and current > locked.answer_version:
        raise Conflict("This delivery's answer has been superseded by a newer answer of the cluster.")
    if Conversation.objects.filter(messages=locked.message_id, deleted_at__isnull=False).exists():
        raise Conflict("The message's conversation has been deleted: its answer is not sent.")
    if not ClusterMembership.objects.filter(message_id=locked.message_id, cluster_id=locked.cluster_id).exists():
        raise Conflict("The message is no longer in this delivery's cluster: its answer is not sent.")
    AnswerDelivery.objects.filter(pk=locked.pk).update(
        status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=Now(), claimed_at=None, last_error=""
    )
    delivery_kick_on_commit()
    return AnswerDelivery.objects.select_related("message__conversation").get(pk=locked.pk)


def delivery_acknowledge(*, tenant: Tenant, delivery_ids: list[UUID]) -> int:
    """Pull mode: the tenant's chat backend has the deliveries ``delivery_ids``: mark them
    delivered. Returns how many changed. Idempotent: an id already delivered, of another
    tenant, or unknown is ignored (a repeat counts 0). A failed one (e.g. superseded while the
    backend held it) is acknowledged too: the backend has it."""
    return AnswerDelivery.objects.filter(
        tenant=tenant, pk__in=delivery_ids, status__in=[DeliveryStatus.PENDING, DeliveryStatus.FAILED]
    ).update(status=DeliveryStatus.DELIVERED, delivered_at=Now(), claimed_at=None)


@dataclass(frozen=True)
class EndpointChange:
    endpoint: DeliveryEndpoint
    created: bool
    secret: str | None  # the signing secret, only when it was just made (created or rotated)


def webhook_url_validate(url: str) -> str:
    """An absolute http(s) URL with a host, or ``ServiceError`` naming ``url``."""
    problem = None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number in range)
    except ValueError:
        problem = "Must be a valid URL."
    else:
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            problem = "Must be an absolute http:// or https:// URL."
        elif len(url) > 2048 or any(ch.isspace() or ord(ch) < 32 for ch in url):
            problem = "Must be at most 2048 characters, without spaces or control characters."
        elif not settings.DELIVERY_ALLOW_PRIVATE_ADDRESSES and _names_a_private_host(parts.hostname):
            problem = "Must be a public address: webhooks may not reach private networks."
    if problem:
        raise ServiceError("The webhook URL is not valid.", fields={"url": [problem]})
    return url


def _names_a_private_host(host: str) -> bool:
    """Whether ``host`` is plainly private as written (an IP literal, or localhost). Names are
    checked where it counts, on the address each delivery connects to (``_connect``)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return not address_is_public(host)
    except ValueError:  # a name, not an address
        return False


def _new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


@transaction.atomic
def delivery_endpoint_set(
    *, tenant: Tenant, url: str, is_active: bool = True, rotate_secret: bool = False
) -> EndpointChange:
    """Create or change the tenant's webhook endpoint. The signing secret is made on creation
    and on ``rotate_secret``, and returned only then (it is never shown again). An active
    endpoint starts taking the tenant's pending deliveries (those it had left to pull too).

    Two first calls at once must not both insert (one endpoint per tenant): ``FOR UPDATE`` on
    an endpoint that does not exist yet locks nothing, so the tenant's row is locked first
    (``FOR NO KEY UPDATE``: it does not hold up rows that merely reference the tenant). The
    second call waits, then finds and changes the endpoint the first one made."""
    webhook_url_validate(url)
    Tenant.objects.select_for_update(no_key=True).only("pk").get(pk=tenant.pk)
    endpoint = DeliveryEndpoint.objects.select_for_update().filter(tenant=tenant).first()
    secret = None
    created = endpoint is None
    if endpoint is None:
        secret = _new_secret()
        endpoint = DeliveryEndpoint.objects.create(tenant=tenant, url=url, secret=secret, is_active=is_active)
        endpoint.refresh_from_db(fields=["created_at"])
    else:
        endpoint.url, endpoint.is_active = url, is_active
        if rotate_secret:
            endpoint.secret = secret = _new_secret()
        endpoint.save(update_fields=["url", "is_active", "secret"])
    if is_active:
        delivery_kick_on_commit()
    return EndpointChange(endpoint=endpoint, created=created, secret=secret)


def delivery_endpoint_delete(*, tenant: Tenant) -> bool:
    """Remove the tenant's endpoint (it pulls its deliveries from now on). False if it had none."""
    deleted, _ = DeliveryEndpoint.objects.filter(tenant=tenant).delete()
    return bool(deleted)
