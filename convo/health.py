"""Liveness and readiness probes for load balancers and orchestrators (docs/operations.md).

``/healthz`` says the process answers: no I/O at all, so a slow database never gets a healthy
process restarted. ``/readyz`` says this process can do its work now: the database answers, the
cache answers, a django-q2 cluster is alive and the embedding queue is not lagging.

Never hanging when a dependency hangs: each check runs in a thread of its own small module-level
pool and the request waits for it at most ``READYZ_CHECK_TIMEOUT_SECONDS`` (the checks run
concurrently, so /readyz answers within about that long whatever hangs). The wait is the one
bound that holds for every failure mode: a half-open TCP connection, a connect to an unreachable
host, a Redis that accepts and never answers. The dependencies' own timeouts then free the thread
behind it: the database check sets ``statement_timeout`` for its transaction, connections have
``DB_CONNECT_TIMEOUT_SECONDS`` (and the pool its wait), django-redis has socket timeouts. Each check
has two threads: a dependency that keeps hanging occupies at most those two, later probes of it
queue behind them, time out and are cancelled, and the other checks are not held up.

Running in their own threads, the database checks use their own connections (checked out of the
pool and returned when the check ends), so they also prove a fresh checkout works.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.dummy import DummyCache
from django.core.cache.backends.locmem import LocMemCache
from django.db import connections, transaction
from django.db.backends.utils import CursorWrapper
from django.db.models import Min, Q
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from conversations.models import Conversation, EmbeddingState, Message

logger = logging.getLogger(__name__)

CheckStatus = Literal["ok", "failed", "skipped"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: CheckStatus
    duration_ms: float = 0.0
    error: str | None = None
    required: bool = True
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Readiness:
    checks: list[CheckResult]

    @property
    def ready(self) -> bool:
        return not any(check.status == "failed" and check.required for check in self.checks)


def _statement_timeout(cursor: CursorWrapper, timeout_seconds: float) -> None:
    """Bound the transaction's statements on the server side too, so a check's thread is freed."""
    cursor.execute("SELECT set_config('statement_timeout', %s, true)", [f"{max(1, int(timeout_seconds * 1000))}ms"])


def check_database(*, alias: str, timeout_seconds: float) -> CheckResult:
    """``SELECT 1`` in a transaction whose statements time out with the check."""
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        _statement_timeout(cursor, timeout_seconds)
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return CheckResult(name="database", status="ok")


def check_cache(*, alias: str) -> CheckResult:
    """Write a fresh key and read it back. django-redis is asked through its client, which raises:
    the cache itself ignores errors (an outage must read as misses), which would hide the cause."""
    backend: Any = caches[alias]
    store = backend.client if type(backend).__module__.startswith("django_redis") else backend
    key, token = f"convo:readyz:{uuid.uuid4().hex}", uuid.uuid4().hex
    store.set(key, token, timeout=10)
    detail = {"backend": type(backend).__name__}
    if store.get(key) != token:
        return CheckResult(name="cache", status="failed", error="the value written was not read back", detail=detail)
    return CheckResult(name="cache", status="ok", detail=detail)


def check_worker(*, alias: str, expected: bool, stale_seconds: float, timeout_seconds: float) -> CheckResult:
    """Is a django-q2 cluster alive? Clusters save their stats every half second with a 3 s expiry,
    in Redis or in the Django cache: where that store is shared, a live stat is the answer. Without
    Redis it is each process's own memory, and the cluster's scheduler is the heartbeat instead:
    it advances every due schedule about every 30 s, so an overdue schedule means no cluster."""
    if not expected:
        return CheckResult(name="worker", status="skipped", detail={"reason": "READYZ_EXPECT_WORKER is off"})
    from django_q.brokers import Broker, get_broker
    from django_q.conf import Conf
    from django_q.models import Schedule
    from django_q.status import Stat

    broker = get_broker()
    keeps_own_stats = type(broker).set_stat is not Broker.set_stat  # the Redis broker
    if keeps_own_stats or not isinstance(broker.cache, LocMemCache | DummyCache | None):
        alive = [stat for stat in Stat.get_all(broker=broker) if str(stat.status) != str(Conf.STOPPED)]
        detail = {"source": "cluster stats", "clusters": len(alive)}
        if not alive:
            error = "no django-q2 cluster has reported in the last 3 s"
            return CheckResult(name="worker", status="failed", error=error, detail=detail)
        return CheckResult(name="worker", status="ok", detail=detail)
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        _statement_timeout(cursor, timeout_seconds)
        due = (
            Schedule.objects.using(alias)
            .exclude(repeats=0)
            .filter(Q(cluster__isnull=True) | Q(cluster=Conf.CLUSTER_NAME))
            .aggregate(oldest=Min("next_run"))["oldest"]
        )
    if due is None:
        reason = "no shared cluster stats (no Redis) and no repeating schedule to tell by"
        return CheckResult(name="worker", status="skipped", detail={"reason": reason})
    overdue = max(0.0, (timezone.now() - due).total_seconds())
    detail = {"source": "schedules", "overdue_seconds": round(overdue)}
    if overdue > stale_seconds:
        error = f"a schedule is {overdue:.0f} s overdue (bound {stale_seconds:g} s): no cluster runs them"
        return CheckResult(name="worker", status="failed", error=error, detail=detail)
    return CheckResult(name="worker", status="ok", detail=detail)


def check_queue_lag(*, alias: str, max_lag_seconds: float, timeout_seconds: float) -> CheckResult:
    """Age of the oldest pending conversation or message, by the database's clock. Each ``min``
    reads one end of a partial index on pending rows; the state is written into the statement (a
    constant, never input) because a bound parameter would keep a generic plan off those indexes."""
    if max_lag_seconds <= 0:
        return CheckResult(name="queue_lag", status="skipped", detail={"reason": "READYZ_MAX_QUEUE_LAG_SECONDS is 0"})
    pending = EmbeddingState.PENDING.value
    oldest = ", ".join(
        f"(SELECT min(created_at) FROM {model._meta.db_table} WHERE embedding_state = '{pending}')"
        for model in (Conversation, Message)
    )
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        _statement_timeout(cursor, timeout_seconds)
        cursor.execute(f"SELECT EXTRACT(EPOCH FROM now() - LEAST({oldest}))")
        row = cursor.fetchone()
    lag = None if row is None or row[0] is None else max(0.0, float(row[0]))
    detail = {"oldest_pending_seconds": None if lag is None else round(lag, 1), "bound_seconds": max_lag_seconds}
    if lag is not None and lag > max_lag_seconds:
        error = f"the oldest pending item has waited {lag:.0f} s (bound {max_lag_seconds:g} s)"
        return CheckResult(name="queue_lag", status="failed", error=error, detail=detail)
    return CheckResult(name="queue_lag", status="ok", detail=detail)


_executors: dict[str, ThreadPoolExecutor] = {}
_executors_lock = threading.Lock()


def _executor(name: str) -> ThreadPoolExecutor:
    """Each check's own two threads, made on first use (so after a server's fork)."""
    with _executors_lock:
        if name not in _executors:
            _executors[name] = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"readyz-{name}")
        return _executors[name]


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def _run_in_thread(name: str, check: Callable[[], CheckResult]) -> CheckResult:
    started = time.perf_counter()
    try:
        result = check()
    except Exception as exc:  # a dependency that errors is what this check exists to report
        result = CheckResult(name=name, status="failed", error=_describe(exc))
    finally:
        connections.close_all()  # this thread's connections go back to the pool
    return replace(result, duration_ms=round((time.perf_counter() - started) * 1000, 1))


def readiness_probe(*, timeout_seconds: float | None = None) -> Readiness:
    """Run every readiness check concurrently, each bounded by the timeout."""
    timeout = settings.READYZ_CHECK_TIMEOUT_SECONDS if timeout_seconds is None else timeout_seconds
    alias = settings.READYZ_DATABASE_ALIAS
    checks: dict[str, Callable[[], CheckResult]] = {
        "database": lambda: check_database(alias=alias, timeout_seconds=timeout),
        "cache": lambda: check_cache(alias=settings.READYZ_CACHE_ALIAS),
        "worker": lambda: check_worker(
            alias=alias,
            expected=settings.READYZ_EXPECT_WORKER,
            stale_seconds=settings.READYZ_WORKER_STALE_SECONDS,
            timeout_seconds=timeout,
        ),
        "queue_lag": lambda: check_queue_lag(
            alias=alias, max_lag_seconds=settings.READYZ_MAX_QUEUE_LAG_SECONDS, timeout_seconds=timeout
        ),
    }
    started = time.perf_counter()
    futures = {name: _executor(name).submit(_run_in_thread, name, check) for name, check in checks.items()}
    optional = set(settings.READYZ_OPTIONAL_CHECKS)
    results = []
    for name, future in futures.items():
        try:
            result = future.result(timeout=max(0.0, started + timeout - time.perf_counter()))
        except FutureTimeout:
            future.cancel()  # still queued behind a hung check of the same kind: drop it
            waited = round((time.perf_counter() - started) * 1000, 1)
            result = CheckResult(name=name, status="failed", duration_ms=waited, error=f"timed out after {timeout:g} s")
        results.append(replace(result, required=name not in optional))
    return Readiness(checks=results)


@require_safe
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive and serving requests. No I/O."""
    return JsonResponse({"status": "ok"})


@require_safe
@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """200 when every required check passes, 503 otherwise; each check's status, time and error."""
    readiness = readiness_probe()
    body = {
        "status": "ok" if readiness.ready else "unavailable",
        "checks": {check.name: {k: v for k, v in asdict(check).items() if k != "name"} for check in readiness.checks},
    }
    response = JsonResponse(body, status=200 if readiness.ready else 503)
    if not readiness.ready:
        failed = [f"{c.name} ({c.error})" for c in readiness.checks if c.status == "failed" and c.required]
        logger.warning("not ready: %s", "; ".join(failed))
        # Instead of Django's "Service Unavailable: /readyz" at ERROR on every probe, which says nothing of why.
        response._has_been_logged = True  # type: ignore[attr-defined]
    return response
