"""Measure ingest against the real database and print the figures beside the issue's targets.

A benchmark, not a test: it reports numbers and never fails on a missed target. It runs on the
database the settings point at (the embedded server of ``convo.settings.local`` by default), under
a tenant of its own (``bench-<timestamp>``) whose rows it deletes at the end (``--keep`` keeps
them). What it measures, and why each piece is there, is written up in docs/benchmarks.md:

1. acknowledgement latency in-process: ``conversation_create`` and ``message_ingest`` (service
   layer, already-validated payloads; each call is one committed transaction);
2. the same over HTTP on loopback against gunicorn, with concurrent keep-alive clients;
3. batches of 100 and 1000 conversations (3 messages each): the storage layer, the API in-process
   (DRF test client, no sockets) and the API over HTTP;
4. bulk throughput through POST /api/v1/messages/batch, beside the raw ceiling of a binary COPY of
   as many rows into scratch tables shaped like ``conversations_message``.

Backpressure (``CONVO_MAX_PENDING_ITEMS``) would answer 503 long before the bulk run ends, and
nothing embeds the rows while it runs, so the limit is raised for this run only (override_settings
in-process, the environment of the gunicorn it starts) and the output says so.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import json
import logging
import os
import platform
import pstats
import secrets
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import django
import orjson
import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection
from django.test.utils import override_settings
from rest_framework.test import APIClient

from conversations.models import Conversation, Message, Tenant
from conversations.payloads import ConversationIn, InboundMessageIn
from conversations.services.admission import admission_cache_clear, pending_work_count
from conversations.services.ingest import (
    conversation_create,
    conversation_create_batch,
    message_ingest,
    message_ingest_batch,
)
from conversations.services.results import Accepted
from conversations.services.tenants import tenant_api_key_create, tenant_create
from convo.benchmark_db import (
    benchmark_database_url,
    benchmark_kicks_delete,
    benchmark_tenant_rows_delete,
    statement_server_ms,
)
from convo.benchmarking import (
    CpuAccount,
    GunicornServer,
    JsonClient,
    LoadResult,
    Summary,
    cpu_busy_since,
    cpu_times,
    drive_concurrently,
    render_lines,
    summarize,
    wait_until_quiet,
)
from convo.env import BASE_DIR

# High enough that no run of this command reaches it; printed with the results.
BENCH_MAX_PENDING_ITEMS = 1_000_000_000

# Columns of conversations_message the ingest INSERT writes; the COPY ceiling writes the same ones.
COPY_COLUMNS = (
    "id",
    "tenant_id",
    "conversation_id",
    "role",
    "text",
    "sender_name",
    "sender_avatar_url",
    "external_id",
    "raw_payload",
    "sent_at",
    "embedding_state",
)
COPY_TYPES = ["uuid", "int8", "uuid", "text", "text", "text", "text", "text", "jsonb", "timestamptz", "text"]

USER_TEXTS = (
    "Hi, I ordered the blue jacket last week and the tracking number still shows nothing. Can you check?",
    "How much is the annual plan if I switch from monthly in the middle of my billing cycle?",
    "The app logs me out every time I switch networks, is that expected?",
)
ASSISTANT_TEXT = "Thanks for reaching out! Let me look that up for you; it usually takes a minute or two."


@dataclass(frozen=True)
class Target:
    """A goal from the issue (``limit``) and, where the seeds give one, the lower bar (``floor``).

    ``metric`` is ``p95`` (milliseconds, lower is better) or ``rate`` (per second, higher is better).
    """

    metric: str
    limit: float
    floor: float | None = None

    def label(self) -> str:
        if self.metric == "rate":
            return f">= {self.limit:,.0f}/s"
        floor = f" (floor < {self.floor:g})" if self.floor is not None else ""
        return f"p95 < {self.limit:g} ms{floor}"

    def verdict(self, value: float) -> str:
        if self.metric == "rate":
            return "met" if value >= self.limit else "MISSED"
        if value < self.limit:
            return "met"
        if self.floor is not None and value < self.floor:
            return "MISSED (floor met)"
        return "MISSED"


@dataclass
class Row:
    """One line of the results table (and of the JSON file)."""

    section: str
    name: str
    latency: Summary | None = None
    rate: float | None = None
    rate_unit: str = ""
    target: Target | None = None
    verdict: str = ""
    note: str = ""
    cpu_busy: float | None = None  # share of the machine's cores busy meanwhile (any process)
    # CPU ms per request over HTTP: (gunicorn, PostgreSQL, the benchmark's clients)
    cpu_per_request: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.target is not None:
            value = self.rate if self.target.metric == "rate" else (self.latency.p95 if self.latency else None)
            if value is not None:
                self.verdict = self.target.verdict(value)


@dataclass
class Plan:
    """Sizes of one run; ``--quick`` shrinks every one of them."""

    iterations: int
    warmup: int
    clients: int
    batch_repetitions: int
    bulk_messages: int
    bulk_batch: int
    bulk_clients: int
    workers: int
    worker_class: str
    threads: int
    server_settings: str
    skip_http: bool
    analyze: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def batch_reps(self, size: int) -> int:
        """Repetitions of a batch measurement: five times as many for batches of 100, which cost a
        tenth of a batch of 1,000, so that their p95 is not merely the second-slowest of 20."""
        return self.batch_repetitions * (5 if size <= 100 else 1)


class Payloads:
    """Unique, realistic request bodies: one conversation with three messages (user, assistant,
    user), each with the platform's ``external_id`` as a chat integration sends it, so the replay
    checks run as they do in production."""

    def __init__(self, run: str) -> None:
        self._run = run
        self._next = 0
        self._sent_at = datetime.now(tz=UTC).replace(microsecond=0)

    def _take(self) -> int:
        self._next += 1
        return self._next

    def conversation(self) -> dict[str, Any]:
        n = self._take()
        sent = self._sent_at
        return {
            "external_id": f"{self._run}-c{n}",
            "user_id": f"user-{n % 997}",
            "channel": "web",
            "session_id": f"{self._run}-s{n}",
            "metadata": {"locale": "en-GB", "plan": "pro", "source": "widget"},
            "messages": [
                {
                    "role": "user",
                    "text": USER_TEXTS[n % 3],
                    "external_id": f"{self._run}-c{n}-m0",
                    "sent_at": sent.isoformat(),
                },
                {
                    "role": "assistant",
                    "text": ASSISTANT_TEXT,
                    "sender_name": "Support bot",
                    "external_id": f"{self._run}-c{n}-m1",
                    "sent_at": (sent + timedelta(seconds=2)).isoformat(),
                },
                {
                    "role": "user",
                    "text": USER_TEXTS[(n + 1) % 3],
                    "external_id": f"{self._run}-c{n}-m2",
                    "sent_at": (sent + timedelta(seconds=30)).isoformat(),
                },
            ],
        }

    def message(self, *, session_space: str, sessions: int) -> dict[str, Any]:
        """An inbound message continuing one of ``sessions`` (user, session) pairs of a space, as a
        chatbot does: most messages land in a conversation that already exists."""
        n = self._take()
        k = n % sessions
        return {
            "user_id": f"{session_space}-u{k}",
            "session_id": f"{self._run}-{session_space}-s{k}",
            "role": "user",
            "text": USER_TEXTS[n % 3],
            "external_id": f"{self._run}-im{n}",
            "sent_at": self._sent_at.isoformat(),
        }


class Command(BaseCommand):
    help = "Benchmark ingest (in-process, over HTTP via gunicorn, batches, bulk) against the real database."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--quick", action="store_true", help="Small sizes: a smoke run in under 30 s.")
        parser.add_argument("--iterations", type=int, help="Single-ingest requests per measurement (2000).")
        parser.add_argument("--clients", type=int, default=8, help="Concurrent HTTP clients for single ingest.")
        parser.add_argument(
            "--batch-repetitions", type=int, help="Repetitions of each batch measurement (20; five times that for 100)."
        )
        parser.add_argument("--bulk-messages", type=int, help="Messages sent through the batch endpoint (200000).")
        parser.add_argument("--bulk-batch", type=int, default=1000, help="Messages per bulk request.")
        parser.add_argument("--bulk-clients", type=int, default=4, help="Concurrent bulk clients.")
        parser.add_argument("--workers", type=int, default=4, help="gunicorn workers.")
        parser.add_argument("--worker-class", default="sync", help="gunicorn worker class (sync, gthread).")
        parser.add_argument("--threads", type=int, default=1, help="gunicorn threads per worker (gthread).")
        parser.add_argument(
            "--server-settings",
            default="convo.settings.production",
            help="DJANGO_SETTINGS_MODULE of the gunicorn it starts (DEBUG off, as deployed).",
        )
        parser.add_argument("--skip-http", action="store_true", help="Only the in-process measurements.")
        parser.add_argument(
            "--no-analyze",
            action="store_true",
            help="Do not refresh planner statistics before each measurement (see docs/benchmarks.md).",
        )
        parser.add_argument("--keep", action="store_true", help="Keep the benchmark tenant and its rows.")
        parser.add_argument("--json", dest="json_path", help="Also write the figures to this JSON file.")
        parser.add_argument("--profile", dest="profile_path", help="cProfile 500 extra conversation_create calls.")
        parser.add_argument(
            "--wait-quiet",
            type=float,
            default=0,
            metavar="SECONDS",
            help="First wait up to this long for the 1-minute load average to drop under --max-load.",
        )
        parser.add_argument("--max-load", type=float, default=0.5, help="See --wait-quiet.")

    def handle(self, *args: Any, **options: Any) -> None:
        quick = bool(options["quick"])
        plan = Plan(
            iterations=options["iterations"] or (150 if quick else 2000),
            warmup=30 if quick else 200,
            clients=options["clients"],
            batch_repetitions=options["batch_repetitions"] or (3 if quick else 20),
            bulk_messages=options["bulk_messages"] or (10_000 if quick else 200_000),
            bulk_batch=options["bulk_batch"],
            bulk_clients=options["bulk_clients"],
            workers=options["workers"],
            worker_class=options["worker_class"],
            threads=options["threads"],
            server_settings=options["server_settings"],
            skip_http=bool(options["skip_http"]),
            analyze=not options["no_analyze"],
        )
        if options["wait_quiet"]:
            wait_until_quiet(max_load=options["max_load"], timeout=options["wait_quiet"], report=self.stdout.write)
        # django-q logs every enqueued embedding kick at INFO: noise in the middle of the table.
        logging.getLogger("django-q").setLevel(logging.WARNING)
        previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM cleans up like Ctrl-C
        try:
            run = IngestBenchmark(plan=plan, write=self.stdout.write, profile_path=options["profile_path"])
            try:
                run.run(quick=quick)
            finally:
                run.cleanup(keep=bool(options["keep"]))
        finally:
            signal.signal(signal.SIGTERM, previous)
        self.stdout.write(run.table())
        self.stdout.write("load average at the end: " + " / ".join(f"{value:.2f}" for value in os.getloadavg()))
        if options["json_path"]:
            Path(options["json_path"]).write_text(json.dumps(run.report(), indent=2, default=str) + "\n")
            self.stdout.write(f"figures written to {options['json_path']}")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class IngestBenchmark:
    """One run: a tenant of its own, the measurements in order, then the cleanup."""

    def __init__(self, *, plan: Plan, write: Callable[[str], Any], profile_path: str | None) -> None:
        self.plan = plan
        self.write = write
        self.profile_path = profile_path
        self.run_id = f"bench-{datetime.now(tz=UTC):%Y%m%d%H%M%S}-{secrets.token_hex(2)}"
        self.payloads = Payloads(self.run_id)
        self.rows: list[Row] = []
        self.environment: dict[str, Any] = {}
        self.tenant: Tenant | None = None
        self.api_key = ""
        self.started = time.perf_counter()
        self._last_cpu: float | None = None
        self._last_split: tuple[float, float, float] | None = None

    # --- orchestration ------------------------------------------------------------------------

    def run(self, *, quick: bool) -> None:
        self.environment = self._environment()
        for key, value in self.environment.items():
            self.write(f"{key:>22}: {value}")
        self.tenant = tenant_create(name=f"Benchmark {self.run_id}", slug=self.run_id)
        _, self.api_key = tenant_api_key_create(tenant=self.tenant, name="benchmark")
        self.write(f"{'tenant':>22}: {self.run_id} (rows deleted at the end unless --keep)")
        self.write(
            f"{'backpressure':>22}: CONVO_MAX_PENDING_ITEMS raised to {BENCH_MAX_PENDING_ITEMS:,} for this run "
            f"(configured: {settings.CONVO_MAX_PENDING_ITEMS:,}); nothing embeds the rows, and each measurement "
            "starts with the run's own backlog marked skipped, as a worker would keep it short"
        )
        if self.plan.analyze:
            self.write(
                f"{'planner statistics':>22}: ANALYZE of the ingest tables before each measurement (--no-analyze)"
            )
        with override_settings(CONVO_MAX_PENDING_ITEMS=BENCH_MAX_PENDING_ITEMS, DEBUG=False):
            admission_cache_clear()
            self._section("1. single ingest, in-process", self._in_process_single)
            self._section("3. batches, storage layer and API in-process", self._in_process_batches)
            self._section("4. raw ceiling: binary COPY", self._copy_ceiling)
            if self.profile_path:
                self._profile()
        admission_cache_clear()
        if self.plan.skip_http:
            return
        with self._server() as server:
            self._section("2. single ingest over HTTP", lambda: self._http_single(server))
            self._section("3. batches over HTTP", lambda: self._http_batches(server))
            self._section("4. bulk through POST /api/v1/messages/batch", lambda: self._http_bulk(server))
        self._admission_count()

    def _section(self, title: str, body: Callable[[], None]) -> None:
        self.write(f"\n== {title} ({time.perf_counter() - self.started:.0f} s into the run)")
        body()

    def _analyze(self) -> None:
        """Refresh the planner's statistics of the ingest tables before a measurement.

        Each run starts from the near-empty tables the last run's cleanup left, whose statistics
        say "a handful of rows". Until autovacuum analyzes them (up to a minute later) the planner
        answers the replay check ``tenant_id = … AND external_id IN (…)`` by reading every message
        of the tenant, so the figures would measure the first minute after a mass delete rather
        than a service in its steady state. ``--no-analyze`` shows that first minute.
        """
        if not self.plan.analyze:
            return
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {Conversation._meta.db_table}, {Message._meta.db_table}")

    def _settle_backlog(self) -> None:
        """Take this run's pending rows out of the queue (state ``skipped``) before a measurement,
        as a running worker would have embedded them.

        A deployed service's backlog stays under ``CONVO_MAX_PENDING_ITEMS`` (50,000 by default),
        while this run raises that bound and embeds nothing, so without this the backlog would
        be every row made so far (556,000 by the end). The admission check counts the backlog
        once a second in some request, and that count grows with it (33 ms at 556,000 on the
        machine of 2026-11-30): the batch measurements' p95 came from it, a cost no deployment
        pays. The last row of the run still measures the count at the backlog the run leaves."""
        with connection.cursor() as cursor:
            for model in (Conversation, Message):
                cursor.execute(
                    f"UPDATE {model._meta.db_table} SET embedding_state = 'skipped'"
                    " WHERE tenant_id = %s AND embedding_state = 'pending'",
                    [self._tenant().pk],
                )
        admission_cache_clear()

    def _timed(self, items: Sequence[Any], warmup: int, call: Callable[[Any], Any]) -> list[float]:
        """``_timed_calls``, noting how busy the machine was while it ran (for the next row)."""
        _timed_calls(items[:warmup], warmup, call)
        self._settle_backlog()
        self._analyze()
        before = cpu_times()
        samples = _timed_calls(items[warmup:], 0, call)
        self._last_cpu = cpu_busy_since(before)
        return samples

    def _drive(self, server: GunicornServer, **kwargs: Any) -> LoadResult:
        """``drive_concurrently``, noting how busy the machine was and where the CPU went while
        it ran (for the next row)."""
        self._settle_backlog()
        self._analyze()
        before = cpu_times()
        with CpuAccount(server_pid=server.pid) as account:
            result = drive_concurrently(**kwargs)
        self._last_cpu = cpu_busy_since(before)
        self._last_split = account.spent.per_request_ms(len(result.latencies)) if account.spent else None
        return result

    def _add(self, row: Row) -> None:
        if row.cpu_busy is None:
            row.cpu_busy, self._last_cpu = self._last_cpu, None
        if row.cpu_per_request is None:
            row.cpu_per_request, self._last_split = self._last_split, None
        self.rows.append(row)
        parts = [f"  {row.name}"]
        if row.latency is not None:
            s = row.latency
            parts.append(f"n={s.count} p50={s.p50:.2f} p95={s.p95:.2f} p99={s.p99:.2f} max={s.max:.1f} ms")
        if row.rate is not None:
            parts.append(f"{row.rate:,.0f} {row.rate_unit}")
        if row.target is not None:
            parts.append(f"[{row.target.label()}: {row.verdict}]")
        if row.cpu_busy is not None:
            parts.append(f"cpu {row.cpu_busy:.0%}")
        if row.cpu_per_request is not None:
            server, database, client = row.cpu_per_request
            parts.append(f"cpu/request: gunicorn {server:.2f} + PostgreSQL {database:.2f} + clients {client:.2f} ms")
        if row.note:
            parts.append(f"({row.note})")
        self.write(" ".join(parts))

    # --- 1. single ingest in-process ----------------------------------------------------------

    def _in_process_single(self) -> None:
        tenant = self._tenant()
        n, warmup = self.plan.iterations, self.plan.warmup
        raw = [self.payloads.conversation() for _ in range(n + warmup)]
        began = time.perf_counter()
        conversations = [ConversationIn.model_validate(body) for body in raw]
        validate_ms = (time.perf_counter() - began) * 1000 / len(raw)
        samples = self._timed(
            conversations, warmup, lambda payload: conversation_create(tenant=tenant, payload=payload)
        )
        self._add(
            Row(
                "1",
                "conversation_create, 1 conv + 3 msgs",
                latency=summarize(samples),
                rate=len(samples) / sum(samples),
                rate_unit="req/s",
                target=Target("p95", 2, floor=10),
                note=f"payload validated beforehand; validation alone {validate_ms:.3f} ms",
            )
        )
        inbound = [
            InboundMessageIn.model_validate(self.payloads.message(session_space="inproc", sessions=100))
            for _ in range(n + warmup)
        ]
        samples = self._timed(inbound, warmup, lambda payload: message_ingest(tenant=tenant, payload=payload))
        self._add(
            Row(
                "1",
                "message_ingest, (user, session) of 100",
                latency=summarize(samples),
                rate=len(samples) / sum(samples),
                rate_unit="req/s",
                target=Target("p95", 2, floor=10),
            )
        )
        client = self._api_client()
        bodies = [orjson.dumps(self.payloads.conversation()) for _ in range(n + warmup)]

        def post(body: bytes) -> None:
            response = client.post("/api/v1/conversations", data=body, content_type="application/json")
            if response.status_code != 202:
                raise RuntimeError(f"POST /conversations answered {response.status_code}: {response.content[:300]!r}")

        samples = self._timed(bodies, warmup, post)
        self._add(
            Row(
                "1",
                "API in-process: POST /conversations, 1 conv + 3 msgs",
                latency=summarize(samples),
                rate=len(samples) / sum(samples),
                rate_unit="req/s",
                note="DRF test client: JSON parsing, validation, auth, middleware; no sockets",
            )
        )

    def _api_client(self) -> APIClient:
        """The DRF test client as the benchmark tenant (a host name the settings allow)."""
        client = APIClient(SERVER_NAME="127.0.0.1")
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {self.api_key}")
        return client

    def _profile(self) -> None:
        """cProfile of extra ``conversation_create`` calls (not part of the timed figures)."""
        tenant = self._tenant()
        payloads = [ConversationIn.model_validate(self.payloads.conversation()) for _ in range(500)]
        profiler = cProfile.Profile()
        profiler.enable()
        for payload in payloads:
            conversation_create(tenant=tenant, payload=payload)
        profiler.disable()
        assert self.profile_path is not None
        profiler.dump_stats(self.profile_path)
        self.write(f"\n== cProfile of 500 conversation_create calls -> {self.profile_path}")
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
        self.write(text.getvalue())

    # --- 3. batches in-process ----------------------------------------------------------------

    def _in_process_batches(self) -> None:
        tenant = self._tenant()
        for size in (100, 1000):
            reps = self.plan.batch_reps(size)
            batches = [
                [ConversationIn.model_validate(self.payloads.conversation()) for _ in range(size)]
                for _ in range(reps + 2)
            ]
            samples = self._timed(
                batches, 2, lambda payloads: _all_accepted(conversation_create_batch(tenant=tenant, payloads=payloads))
            )
            self._add(
                Row(
                    "3",
                    f"storage: conversation_create_batch {size} conv ({size * 3} msgs)",
                    latency=summarize(samples),
                    rate=size * 3 * len(samples) / sum(samples),
                    rate_unit="msg/s",
                    target=Target("p95", 10, floor=100) if size == 100 else None,
                )
            )
            if size == 100:
                self._database_share(size)
        batches_in = [
            [
                InboundMessageIn.model_validate(self.payloads.message(session_space="inbatch", sessions=100))
                for _ in range(1000)
            ]
            for _ in range(self.plan.batch_reps(1000) + 2)
        ]
        samples = self._timed(
            batches_in, 2, lambda payloads: _all_accepted(message_ingest_batch(tenant=tenant, payloads=payloads))
        )
        self._add(
            Row(
                "3",
                "storage: message_ingest_batch 1000 msgs",
                latency=summarize(samples),
                rate=1000 * len(samples) / sum(samples),
                rate_unit="msg/s",
                note="one client; the ceiling of one gunicorn worker's DB work",
            )
        )

        client = self._api_client()
        for size in (100, 1000):
            reps = self.plan.batch_reps(size)
            bodies = [orjson.dumps({"conversations": [self.payloads.conversation() for _ in range(size)]})]
            bodies += [orjson.dumps({"conversations": [self.payloads.conversation() for _ in range(size)]})]
            bodies += [
                orjson.dumps({"conversations": [self.payloads.conversation() for _ in range(size)]})
                for _ in range(reps)
            ]

            def post(body: bytes) -> None:
                response = client.post("/api/v1/conversations/batch", data=body, content_type="application/json")
                if response.status_code != 202 or orjson.loads(response.content)["rejected"]:
                    raise RuntimeError(f"batch answered {response.status_code}: {response.content[:300]!r}")

            samples = self._timed(bodies, 2, post)
            self._add(
                Row(
                    "3",
                    f"API in-process: POST conversations/batch {size} conv",
                    latency=summarize(samples),
                    rate=size * 3 * len(samples) / sum(samples),
                    rate_unit="msg/s",
                    target=Target("p95", 50, floor=100) if size == 100 else None,
                    note="DRF test client: the whole Django stack without sockets",
                )
            )

    def _database_share(self, size: int) -> None:
        """PostgreSQL's own time for the statement of a batch (rows, indexes, foreign-key checks),
        without the client, the round trip or the commit: the part of the storage figure above
        that no code of ours can remove."""
        tenant = self._tenant()
        samples = [
            statement_server_ms(
                call=lambda: conversation_create_batch(
                    tenant=tenant,
                    payloads=[ConversationIn.model_validate(self.payloads.conversation()) for _ in range(size)],
                ),
                statement_prefix="WITH conversations AS",
            )
            / 1000.0
            for _ in range(self.plan.batch_reps(size))
        ]
        self._add(
            Row(
                "3",
                f"database alone: the statement of {size} conv ({size * 3} msgs), FK checks included",
                latency=summarize(samples),
                note="EXPLAIN ANALYZE, rolled back; the commit's WAL flush comes on top",
            )
        )

    # --- 4. COPY ceiling ----------------------------------------------------------------------

    def _copy_ceiling(self) -> None:
        """Binary COPY of as many rows as the bulk run sends, into scratch copies of the message
        table: a TEMP table (no WAL) without and with the real indexes, and a regular (logged)
        table with the indexes, in one transaction and in transactions of one bulk batch each."""
        total, chunk = self.plan.bulk_messages, self.plan.bulk_batch
        tenant_id = self._tenant().pk
        now = datetime.now(tz=UTC)
        conversation_ids = [uuid.uuid4() for _ in range(max(1, total // 10))]
        rows = [
            (
                uuid.uuid4(),
                tenant_id,
                conversation_ids[i % len(conversation_ids)],
                "user",
                USER_TEXTS[i % 3],
                "",
                "",
                f"{self.run_id}-copy{i}",
                None,
                now,
                "pending",
            )
            for i in range(total)
        ]
        rows.sort(key=lambda row: row[0])  # time-ordered ids, as uuid7 gives the real inserts
        table = Message._meta.db_table
        scratch = f"bench_copy_{os.getpid()}"
        variants = [
            ("TEMP table, no indexes, one COPY", "TEMP", "INCLUDING DEFAULTS", total),
            ("TEMP table, same indexes, one COPY", "TEMP", "INCLUDING DEFAULTS INCLUDING INDEXES", total),
            ("logged table, same indexes, one COPY", "", "INCLUDING DEFAULTS INCLUDING INDEXES", total),
            (f"logged table, same indexes, {chunk}/commit", "", "INCLUDING DEFAULTS INCLUDING INDEXES", chunk),
        ]
        columns = ", ".join(COPY_COLUMNS)
        with psycopg.connect(benchmark_database_url()) as conn:
            for label, kind, including, per_commit in variants:
                conn.execute(f"DROP TABLE IF EXISTS {scratch}")
                conn.execute(f"CREATE {kind} TABLE {scratch} (LIKE {table} {including})")
                conn.commit()
                try:
                    before = cpu_times()
                    began = time.perf_counter()
                    for start in range(0, total, per_commit):
                        with (
                            conn.cursor() as cursor,
                            cursor.copy(f"COPY {scratch} ({columns}) FROM STDIN (FORMAT BINARY)") as copy,
                        ):
                            copy.set_types(COPY_TYPES)
                            for row in rows[start : start + per_commit]:
                                copy.write_row(row)
                        conn.commit()
                    elapsed = time.perf_counter() - began
                    self._last_cpu = cpu_busy_since(before)
                finally:
                    conn.rollback()
                    conn.execute(f"DROP TABLE IF EXISTS {scratch}")
                    conn.commit()
                self._add(
                    Row("4", f"COPY ceiling: {label}", rate=total / elapsed, rate_unit="msg/s", note=f"{total:,} rows")
                )

    # --- 2-4 over HTTP ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _server(self) -> Iterator[GunicornServer]:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": self.plan.server_settings,
            "DATABASE_URL": benchmark_database_url(),  # the workers connect; none starts a server of its own
            "CONVO_MAX_PENDING_ITEMS": str(BENCH_MAX_PENDING_ITEMS),
            "SECURE_SSL_REDIRECT": "false",  # production settings on plain-HTTP loopback
            "SECRET_KEY": os.environ.get("SECRET_KEY") or secrets.token_urlsafe(64),
        }
        log = Path(settings.CONVO_DATA_DIR) / f"{self.run_id}-gunicorn.log"
        server = GunicornServer(
            cwd=BASE_DIR,
            env=env,
            workers=self.plan.workers,
            worker_class=self.plan.worker_class,
            threads=self.plan.threads,
            log_path=log,
        )
        self.write(
            f"\nstarting gunicorn: {server.workers} {server.worker_class} workers x {server.threads} threads on "
            f"127.0.0.1:{server.port}, {self.plan.server_settings}, "
            f"CONVO_MAX_PENDING_ITEMS={BENCH_MAX_PENDING_ITEMS:,} (log: {log})"
        )
        began = time.perf_counter()
        with server:
            self.write(f"  answering after {time.perf_counter() - began:.1f} s")
            yield server
        self.write("gunicorn stopped")
        if log.exists() and not log.read_text().strip():
            log.unlink()

    def _connect(self, server: GunicornServer) -> Callable[[], JsonClient]:
        return lambda: JsonClient(server.host, server.port, api_key=self.api_key)

    def _http_single(self, server: GunicornServer) -> None:
        n, warmup, clients = self.plan.iterations, self.plan.warmup, self.plan.clients
        connect = self._connect(server)
        self._http_floor(server)
        cases: list[tuple[str, str, Callable[[int], dict[str, Any]]]] = [
            ("conversations", "POST /conversations, 1 conv + 3 msgs", lambda _: self.payloads.conversation()),
            (
                "messages",
                "POST /messages, (user, session) of 100 per client",
                lambda i: self.payloads.message(session_space=f"http{i % clients}", sessions=100),
            ),
        ]
        for resource, label, make in cases:
            path = f"/api/v1/{resource}"
            warm = [orjson.dumps(make(i)) for i in range(max(warmup, clients * 10))]
            _check(drive_concurrently(clients=clients, bodies=warm, path=path, connect=connect), 202)
            for count in (1, clients) if resource == "conversations" else (clients,):
                bodies = [orjson.dumps(make(i)) for i in range(n)]
                result = _check(self._drive(server, clients=count, bodies=bodies, path=path, connect=connect), 202)
                self._add(
                    Row(
                        "2",
                        f"HTTP {label}, {count} client{'s' if count > 1 else ''}",
                        latency=summarize(result.latencies),
                        rate=len(result.latencies) / result.wall_seconds,
                        rate_unit="req/s",
                        target=Target("p95", 10, floor=10) if count == clients else None,
                        note="" if count == clients else "no queueing: the service time of one request",
                    )
                )

    def _http_floor(self, server: GunicornServer) -> None:
        """The same clients against ``GET /healthz``, a plain Django view that does no work: what
        gunicorn, Django's middleware and the clients cost per request here. The ingest rows add
        DRF, the API key, parsing, validation, the database and the answer to it."""
        connect, clients = self._connect(server), self.plan.clients
        drive_concurrently(
            clients=clients, bodies=[None] * clients * 10, path="/healthz", connect=connect, method="GET"
        )
        result = self._drive(
            server,
            clients=clients,
            bodies=[None] * self.plan.iterations,
            path="/healthz",
            connect=connect,
            method="GET",
        )
        self._add(
            Row(
                "2",
                f"floor: HTTP GET /healthz (no work), {clients} clients",
                latency=summarize(_check(result, 200).latencies),
                rate=len(result.latencies) / result.wall_seconds,
                rate_unit="req/s",
                note="gunicorn + Django middleware + the clients; no DRF, no database",
            )
        )

    def _http_batches(self, server: GunicornServer) -> None:
        for size in (100, 1000):
            reps = self.plan.batch_reps(size)
            bodies = [
                orjson.dumps({"conversations": [self.payloads.conversation() for _ in range(size)]})
                for _ in range(reps + 2)
            ]
            warm, measured = bodies[:2], bodies[2:]
            connect = self._connect(server)
            _check(drive_concurrently(clients=1, bodies=warm, path="/api/v1/conversations/batch", connect=connect), 202)
            result = self._drive(
                server,
                clients=1,
                bodies=measured,
                path="/api/v1/conversations/batch",
                connect=connect,
                keep_bodies=True,
            )
            _check(result, 202)
            accepted = sum(orjson.loads(body)["accepted"] for body in result.bodies)
            if accepted != size * reps:
                raise RuntimeError(f"{accepted} of {size * reps} conversations accepted")
            self._add(
                Row(
                    "3",
                    f"API over HTTP: POST conversations/batch {size} conv",
                    latency=summarize(result.latencies),
                    rate=size * 3 * reps / result.wall_seconds,
                    rate_unit="msg/s",
                    target=Target("p95", 50, floor=100) if size == 100 else None,
                    note=f"body {len(measured[0]) / 1024:.0f} KiB",
                )
            )

    def _http_bulk(self, server: GunicornServer) -> None:
        total, per_request, clients = self.plan.bulk_messages, self.plan.bulk_batch, self.plan.bulk_clients
        requests = max(1, total // per_request)
        path = "/api/v1/messages/batch"
        connect = self._connect(server)

        def body(index: int) -> bytes:
            space = f"bulk{index % clients}"  # each client its own sessions: no lock queues between them
            messages = [self.payloads.message(session_space=space, sessions=100) for _ in range(per_request)]
            return orjson.dumps({"messages": messages})

        _check(
            drive_concurrently(clients=clients, bodies=[body(i) for i in range(clients)], path=path, connect=connect),
            202,
        )
        bodies = [body(i) for i in range(requests)]
        result = self._drive(server, clients=clients, bodies=bodies, path=path, connect=connect, keep_bodies=True)
        _check(result, 202)
        accepted = sum(orjson.loads(answer)["accepted"] for answer in result.bodies)
        if accepted != requests * per_request:
            raise RuntimeError(f"{accepted} of {requests * per_request} messages accepted")
        self._add(
            Row(
                "4",
                f"bulk: POST messages/batch x{per_request}, {clients} clients",
                latency=summarize(result.latencies),
                rate=accepted / result.wall_seconds,
                rate_unit="msg/s",
                target=Target("rate", 10_000),
                note=f"{accepted:,} messages in {result.wall_seconds:.1f} s, body {len(bodies[0]) / 1024:.0f} KiB",
            )
        )

    def _admission_count(self) -> None:
        """What the backpressure check costs at the backlog the run left: every process pays one
        count per ``CONVO_PENDING_COUNT_TTL_SECONDS`` inside some request, capped at the bound
        (``CONVO_MAX_PENDING_ITEMS``); the uncapped count beside it for comparison."""
        self._analyze()
        bound: int = settings.CONVO_MAX_PENDING_ITEMS
        pending = pending_work_count()
        for label, at_most in ((f"capped at the bound, {bound:,}", bound), ("uncapped", None)):
            samples = []
            for _ in range(7):
                began = time.perf_counter()
                pending_work_count(at_most=at_most)
                samples.append(time.perf_counter() - began)
            self._add(
                Row(
                    "4",
                    f"admission: pending_work_count() {label}, at {pending:,} pending",
                    latency=summarize(samples[2:]),
                    note=f"paid by one request per process every {settings.CONVO_PENDING_COUNT_TTL_SECONDS:g} s"
                    if at_most is not None
                    else "",
                )
            )

    # --- cleanup and reporting ----------------------------------------------------------------

    def cleanup(self, *, keep: bool) -> None:
        if self.tenant is None:
            return
        if keep:
            self.write(f"\nkept tenant {self.run_id} (id {self.tenant.pk}) and its rows")
            return
        began = time.perf_counter()
        deleted = benchmark_tenant_rows_delete(self.tenant.pk)
        kicks = benchmark_kicks_delete(self.started_wall)
        admission_cache_clear()
        self.write(
            f"\ndeleted tenant {self.run_id}: "
            + ", ".join(f"{count:,} {table}" for table, count in deleted.items())
            + f"; {kicks} queued embedding kicks dropped ({time.perf_counter() - began:.1f} s)"
        )

    @property
    def started_wall(self) -> datetime:
        return datetime.now(tz=UTC) - timedelta(seconds=time.perf_counter() - self.started)

    def table(self) -> str:
        header = ("#", "measurement", "n", "p50 ms", "p95 ms", "p99 ms", "rate", "cpu", "target", "verdict")
        lines = [header]
        for row in sorted(self.rows, key=lambda row: row.section):
            s = row.latency
            lines.append(
                (
                    row.section,
                    row.name,
                    str(s.count) if s else "",
                    f"{s.p50:.2f}" if s else "",
                    f"{s.p95:.2f}" if s else "",
                    f"{s.p99:.2f}" if s else "",
                    f"{row.rate:,.0f} {row.rate_unit}" if row.rate is not None else "",
                    f"{row.cpu_busy:.0%}" if row.cpu_busy is not None else "",
                    row.target.label() if row.target else "",
                    row.verdict,
                )
            )
        return render_lines(lines, numeric={2, 3, 4, 5, 6, 7})

    def report(self) -> dict[str, Any]:
        return {
            "run": self.run_id,
            "environment": self.environment,
            "plan": asdict(self.plan),
            "rows": [
                {
                    **{k: v for k, v in asdict(row).items() if k not in {"latency", "target"}},
                    "latency_ms": asdict(row.latency) if row.latency else None,
                    "target": row.target.label() if row.target else None,
                }
                for row in self.rows
            ],
        }

    # --- helpers ------------------------------------------------------------------------------

    def _tenant(self) -> Tenant:
        assert self.tenant is not None
        return self.tenant

    def _environment(self) -> dict[str, Any]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('server_version')")
            version = cursor.fetchone()
            found = {}
            for name in ("synchronous_commit", "fsync", "wal_sync_method", "full_page_writes", "shared_buffers"):
                cursor.execute(f"SHOW {name}")
                row = cursor.fetchone()
                found[name] = row[0] if row else "?"
        cpu = "?"
        with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "?")
        db = connection.settings_dict
        return {
            "cpus": f"{len(os.sched_getaffinity(0))} usable ({cpu})",
            "load average": " / ".join(f"{value:.2f}" for value in os.getloadavg()) + " (1, 5, 15 min, at start)",
            "python / django": f"{platform.python_version()} / {django.get_version()}",
            "postgresql": f"{version[0] if version else '?'} at {db['HOST'] or db['OPTIONS'].get('host', '')} "
            f"db {db['NAME']}",
            "durability": ", ".join(f"{k}={v}" for k, v in found.items()),
            "settings": f"{settings.SETTINGS_MODULE} in-process (DEBUG forced off); gunicorn: "
            f"{self.plan.server_settings}",
            "sizes": f"iterations={self.plan.iterations} warmup={self.plan.warmup} clients={self.plan.clients} "
            f"batch reps={self.plan.batch_reps(1000)} ({self.plan.batch_reps(100)} for 100) "
            f"bulk={self.plan.bulk_messages:,} msgs "
            f"x{self.plan.bulk_batch}/req by {self.plan.bulk_clients} clients",
        }


def _timed_calls(items: Sequence[Any], warmup: int, call: Callable[[Any], Any]) -> list[float]:
    """Call ``call`` on each item, timing all but the first ``warmup`` calls (perf_counter)."""
    for item in items[:warmup]:
        call(item)
    samples = []
    for item in items[warmup:]:
        began = time.perf_counter()
        call(item)
        samples.append(time.perf_counter() - began)
    return samples


def _all_accepted(results: Sequence[Any]) -> None:
    rejected = [result for result in results if not isinstance(result, Accepted)]
    if rejected:
        raise RuntimeError(f"{len(rejected)} items rejected, first: {rejected[0]}")


def _check(result: Any, expected: int) -> Any:
    """Refuse figures from a run where some request was not answered ``expected``."""
    unexpected = {status: count for status, count in result.statuses.items() if status != expected}
    if unexpected:
        sample = result.bodies[0][:300] if result.bodies else b""
        raise RuntimeError(f"unexpected answers {unexpected}; first body: {sample!r}")
    return result
