"""Measure embeddings and search against the real database and print the figures beside the
issue's targets.

A benchmark, not a test: it reports numbers and never fails on a missed target. It runs on the
database the settings point at (the embedded server of ``convo.settings.local`` by default) with
the configured embedder (the bundled all-MiniLM-L6-v2 by default), under tenants of its own
(``bench-emb-<timestamp>-…``) whose rows it deletes at the end (``--keep`` keeps them).
docs/benchmarks.md ("Embeddings and search (issue 3)") records the figures and what bounds them.

1. Throughput: the same texts through the model directly (``embed`` in slices of the batch size)
   and through the pipeline (ingest, then ``embedding_drain``: claim, cache, model, store), at
   the configured ``EMBEDDING_BATCH_SIZE`` and at larger batches. Texts carry a suffix unique to
   the run, so the embedding cache is cold.
2. Acknowledgement to searchable under a steady message rate: a real ``manage.py qcluster`` (ORM
   broker) embeds while this process ingests at ``--rate`` and polls for ``done``.
3. Search: ``message_neighbours`` in-process over corpora of ``--sizes`` rows of real
   all-MiniLM-L6-v2 vectors of Banking77 (perturbed copies beyond the 10,003 real ones), loaded
   in bulk into a space of their own whose HNSW index is built afterwards; unfiltered and per
   user, with recall@10 against a brute-force search of the same rows.
4. The embedding cache on Banking77 (train + test) through the pipeline; then, on those same
   rows (embedded by the pipeline into the active space), search in-process and over HTTP.

The pipeline sections embed whatever else is pending in the database too (that is what the
worker does); they refuse to start while more than ``--max-foreign-pending`` items of other
tenants wait, so another engineer's ingest benchmark is never drained by this one.
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
import re
import secrets
import signal
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import django
import numpy as np
import orjson
import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, transaction
from django.db.models import Sum
from django.test.utils import override_settings
from django.urls import Resolver404, resolve

from conversations.embeddings import get_embedder
from conversations.embeddings.base import Embedder
from conversations.embeddings.local import SentenceTransformerEmbedder
from conversations.models import (
    Conversation,
    ConversationEmbedding,
    EmbeddingCacheEntry,
    EmbeddingCacheStats,
    EmbeddingSpace,
    Message,
    MessageEmbedding,
    SpaceState,
    Tenant,
)
from conversations.payloads import InboundMessageIn
from conversations.search import SearchFilters, message_neighbours
from conversations.services.admission import admission_cache_clear, pending_work_count
from conversations.services.embedding import embedding_drain
from conversations.services.embedding_cache import cache_key, text_normalize
from conversations.services.embedding_spaces import (
    SPACES_LOCK,
    embedding_space_for,
    embedding_space_index,
    embedding_spaces_forget,
)
from conversations.services.ingest import message_ingest, message_ingest_batch
from conversations.services.tenants import tenant_api_key_create, tenant_create
from convo.benchmark_db import benchmark_database_url, benchmark_kicks_delete, benchmark_tenant_rows_delete
from convo.benchmarking import (
    GunicornServer,
    JsonClient,
    cpu_busy_since,
    cpu_times,
    summarize,
    wait_until_quiet,
)
from convo.benchmarking_search import (
    DonePoller,
    Figure,
    Matrix,
    QCluster,
    TimedEmbedder,
    banking77,
    corpus_from,
    exact_top_k,
    ms,
    paced,
    recall_with_ties,
    render_table,
    vectors_cached,
    verdict,
)
from convo.db import no_statement_timeout
from convo.env import BASE_DIR

K = 10
_VECTOR_LITERAL = re.compile(r"'\[[-0-9.e,]+\]'")
SEED = 20_260_404
POLL_SECONDS = 0.025


@dataclass
class Plan:
    """Sizes of one run; ``--quick`` shrinks every one of them."""

    sections: tuple[str, ...]
    throughput_texts: int
    repetitions: int
    batch_sizes: tuple[int, ...]
    rate: float
    latency_seconds: float
    latency_warmup_seconds: float
    q_workers: int
    latency_batch_size: int
    cache_texts: int
    sizes: tuple[int, ...]
    queries: int
    warmup_queries: int
    noise: float
    corpus_base: int
    explain: bool
    http_workers: int
    max_foreign_pending: int
    profile_path: str | None
    maintenance_work_mem: str | None


class Command(BaseCommand):
    help = "Benchmark embedding throughput, ack-to-searchable latency, search latency/recall and the embedding cache."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--quick", action="store_true", help="Small sizes: a smoke run in under a minute.")
        parser.add_argument("--sections", default="1,2,3,4", help="Which sections to run (1,2,3,4).")
        parser.add_argument("--sizes", help="Search corpus sizes, e.g. 10000,100000 (default; quick: 5000).")
        parser.add_argument("--throughput-texts", type=int, help="Texts per throughput measurement (2000).")
        parser.add_argument("--repetitions", type=int, help="Repetitions of each throughput measurement (2).")
        parser.add_argument("--batch-sizes", help="EMBEDDING_BATCH_SIZE values to compare (configured,64).")
        parser.add_argument("--rate", type=float, default=50.0, help="Messages per second for section 2.")
        parser.add_argument("--latency-seconds", type=float, help="Measured seconds at --rate (60).")
        parser.add_argument("--latency-batch-size", type=int, help="EMBEDDING_BATCH_SIZE of the cluster (configured).")
        parser.add_argument("--q-workers", type=int, help="Q_WORKERS of the cluster (configured).")
        parser.add_argument("--cache-texts", type=int, help="Banking77 texts for section 4 (all 13,083).")
        parser.add_argument("--queries", type=int, help="Timed search queries per case (500).")
        parser.add_argument("--noise", type=float, default=0.015, help="Gaussian sigma of perturbed copies.")
        parser.add_argument("--explain", action="store_true", help="Per-statement timings and EXPLAIN ANALYZE.")
        parser.add_argument("--http-workers", type=int, default=2, help="gunicorn workers for HTTP search.")
        parser.add_argument(
            "--max-foreign-pending",
            type=int,
            default=1000,
            help="Skip the pipeline sections while more items of other tenants wait for embedding.",
        )
        parser.add_argument("--profile", dest="profile_path", help="cProfile of a pipeline drain to this file.")
        parser.add_argument("--keep", action="store_true", help="Keep the benchmark tenants, spaces and rows.")
        parser.add_argument(
            "--maintenance-work-mem",
            metavar="SIZE",
            help="maintenance_work_mem for this run's HNSW builds, e.g. 4GB (1M vectors outgrow the server's).",
        )
        parser.add_argument("--json", dest="json_path", help="Also write the figures to this JSON file.")
        parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS", help="Wait for a quiet machine.")
        parser.add_argument("--max-load", type=float, default=0.7, help="See --wait-quiet.")

    def handle(self, *args: Any, **options: Any) -> None:
        quick = bool(options["quick"])
        configured = int(settings.EMBEDDING_BATCH_SIZE)

        def ints(value: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
            return tuple(int(part) for part in value.split(",") if part.strip()) if value else default

        plan = Plan(
            sections=tuple(part.strip() for part in options["sections"].split(",") if part.strip()),
            throughput_texts=options["throughput_texts"] or (150 if quick else 2000),
            repetitions=options["repetitions"] or (1 if quick else 2),
            batch_sizes=ints(options["batch_sizes"], tuple(dict.fromkeys((configured, 64)))),
            rate=options["rate"],
            latency_seconds=options["latency_seconds"] or (5.0 if quick else 60.0),
            latency_warmup_seconds=3.0 if quick else 10.0,
            q_workers=options["q_workers"] or int(settings.Q_CLUSTER.get("workers", 2)),
            latency_batch_size=options["latency_batch_size"] or configured,
            cache_texts=options["cache_texts"] or (600 if quick else 13_083),
            sizes=ints(options["sizes"], (5000,) if quick else (10_000, 100_000)),
            queries=options["queries"] or (40 if quick else 500),
            warmup_queries=5 if quick else 20,
            noise=options["noise"],
            corpus_base=2000 if quick else 10_003,
            explain=bool(options["explain"]),
            http_workers=options["http_workers"],
            max_foreign_pending=options["max_foreign_pending"],
            profile_path=options["profile_path"],
            maintenance_work_mem=options["maintenance_work_mem"],
        )
        if options["wait_quiet"]:
            wait_until_quiet(max_load=options["max_load"], timeout=options["wait_quiet"], report=self.stdout.write)
        logging.getLogger("django-q").setLevel(logging.WARNING)
        logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
        previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM cleans up like Ctrl-C
        run = EmbeddingsBenchmark(plan=plan, write=self.stdout.write, keep=bool(options["keep"]))
        try:
            try:
                run.run()
            finally:
                run.cleanup()
        finally:
            signal.signal(signal.SIGTERM, previous)
        self.stdout.write(render_table(run.figures))
        self.stdout.write("load average at the end: " + " / ".join(f"{value:.2f}" for value in os.getloadavg()))
        if options["json_path"]:
            Path(options["json_path"]).write_text(json.dumps(run.report(), indent=2, default=str) + "\n")
            self.stdout.write(f"figures written to {options['json_path']}")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class EmbeddingsBenchmark:
    """One run: tenants and spaces of its own, the sections in order, then the cleanup."""

    def __init__(self, *, plan: Plan, write: Callable[[str], Any], keep: bool) -> None:
        self.plan = plan
        self.write = write
        self.keep = keep
        self.run_id = f"bench-emb-{datetime.now(tz=UTC):%Y%m%d%H%M%S}-{secrets.token_hex(2)}"
        self.tag = self.run_id[-4:] + secrets.token_hex(2)  # the text suffix that keeps the cache cold
        self.started = time.perf_counter()
        self.started_wall = datetime.now(tz=UTC)
        self.figures: list[Figure] = []
        self.environment: dict[str, Any] = {}
        self.tenants: list[Tenant] = []
        self.bench_spaces: list[tuple[EmbeddingSpace, Tenant]] = []  # search corpora, each with its tenant
        self.cached_texts: set[str] = set()  # normalised texts this run put in the durable cache
        self.embedder: Embedder | None = None
        self.space: EmbeddingSpace | None = None
        self.space_created = False
        self.pipeline_ok = True
        self.cache_tenant: Tenant | None = None
        self.data_dir = Path(settings.CONVO_DATA_DIR) / "benchmarks"

    # --- orchestration ------------------------------------------------------------------------

    def run(self) -> None:
        self.environment = self._environment()
        for key, value in self.environment.items():
            self.write(f"{key:>20}: {value}")
        self._section("0. model and pipeline space", self._prepare)
        sections: dict[str, tuple[str, Callable[[], None]]] = {
            "1": ("1. throughput: model alone vs the pipeline", self._throughput),
            "2": ("2. acknowledgement to searchable under a steady rate", self._latency),
            "4": ("4. the embedding cache on Banking77, then search on those rows", self._cache),
            "3": ("3. search latency and recall on bulk-loaded corpora", self._search),
        }
        for number in ("1", "2", "4", "3"):
            if number in self.plan.sections:
                title, body = sections[number]
                self._section(title, body)

    def _section(self, title: str, body: Callable[[], None]) -> None:
        self.write(f"\n== {title} ({time.perf_counter() - self.started:.0f} s into the run)")
        body()

    def _add(self, figure: Figure) -> None:
        self.figures.append(figure)
        line = f"  {figure.name}: {figure.value}"
        if figure.target:
            line += f"  [{figure.target}: {figure.verdict}]"
        if figure.note:
            line += f"  ({figure.note})"
        self.write(line)

    def _tenant(self, purpose: str) -> Tenant:
        slug = f"{self.run_id}-{purpose}"[:100]
        tenant = tenant_create(name=f"Benchmark {slug}", slug=slug)
        self.tenants.append(tenant)
        return tenant

    def _embedder(self) -> Embedder:
        assert self.embedder is not None
        return self.embedder

    # --- 0. preparation -----------------------------------------------------------------------

    def _prepare(self) -> None:
        began = time.perf_counter()
        embedder = get_embedder()
        embedder.embed(["warm up the model"])
        self.embedder = embedder
        self.write(f"  embedder {embedder!r} ready in {time.perf_counter() - began:.1f} s")
        self.space_created = not EmbeddingSpace.objects.filter(model_id=embedder.model_id).exists()
        self.space = embedding_space_for(embedder=embedder)
        self.write(
            f"  pipeline space {self.space} (id {self.space.pk}){', created by this run' if self.space_created else ''}"
        )
        if not {"1", "2", "4"} & set(self.plan.sections):
            return
        admission_cache_clear()
        foreign = pending_work_count()
        if foreign > self.plan.max_foreign_pending:
            self.pipeline_ok = False
            self.write(
                f"  {foreign:,} items of other tenants are waiting for embedding (another benchmark running?): "
                f"sections 1, 2 and 4 are skipped (--max-foreign-pending {self.plan.max_foreign_pending})"
            )
            return
        if foreign:
            began = time.perf_counter()
            claimed = embedding_drain(embedder=embedder, seconds=300)
            self.write(
                f"  embedded {claimed} items of other tenants that were pending (what the worker would do) "
                f"in {time.perf_counter() - began:.1f} s, so they do not count in the measurements"
            )

    # --- 1. throughput --------------------------------------------------------------------------

    def _throughput(self) -> None:
        if not self.pipeline_ok:
            return
        embedder = self._embedder()
        n = self.plan.throughput_texts
        base = _shuffled(banking77("train"), SEED)[:n]
        tenant = self._tenant("throughput")
        timed = TimedEmbedder(embedder)

        began = time.perf_counter()
        embedder.embed([f"{text} ~{self.tag}ceiling" for text in base])
        ceiling = n / (time.perf_counter() - began)
        self._add(
            Figure(
                "1",
                f"model alone, one embed() call of {n} texts",
                f"{ceiling:,.0f} texts/s",
                note="sentence-transformers sorts by length and encodes 32 at a time: the model's ceiling",
                data={"rate": ceiling},
            )
        )
        # With the model in a child process (EMBEDDINGS_PROCESS), the model is also timed in this
        # process, so the cost of the pipes shows and the pipeline is set beside both.
        direct = _in_process_twin(embedder)
        done_so_far = 0
        for batch in self.plan.batch_sizes:
            raws: list[float] = []
            directs: list[float] = []
            drains: list[float] = []
            ends: list[float] = []
            overheads: list[float] = []
            in_model: list[float] = []
            for rep in range(self.plan.repetitions):
                texts = [f"{text} ~{self.tag}b{batch}r{rep}" for text in base]
                self.cached_texts.update(text_normalize(text) for text in texts)
                order = ("raw", "direct", "pipeline") if rep % 2 == 0 else ("pipeline", "direct", "raw")
                for step in order:
                    if step in ("raw", "direct"):
                        alone = embedder if step == "raw" else direct
                        if alone is None:
                            continue
                        began = time.perf_counter()
                        for start in range(0, n, batch):
                            alone.embed(texts[start : start + batch])
                        (raws if step == "raw" else directs).append(n / (time.perf_counter() - began))
                        continue
                    payloads = [
                        InboundMessageIn.model_validate(
                            {"user_id": f"u{i % 20}", "session_id": f"{self.tag}-t{batch}-{rep}-{i % 20}", "text": t}
                        )
                        for i, t in enumerate(texts)
                    ]
                    self._analyze()
                    timed.reset()
                    began = time.perf_counter()
                    for start in range(0, n, 1000):
                        message_ingest_batch(tenant=tenant, payloads=payloads[start : start + 1000])
                    ingested = time.perf_counter()
                    profiler = cProfile.Profile() if self.plan.profile_path and rep == 0 else None
                    with override_settings(EMBEDDING_BATCH_SIZE=batch):
                        if profiler:
                            profiler.enable()
                        embedding_drain(embedder=timed, seconds=900)
                        if profiler:
                            profiler.disable()
                    finished = time.perf_counter()
                    done_so_far += n
                    done = Message.objects.filter(tenant=tenant, embedding_state="done").count()
                    if done != done_so_far:
                        raise RuntimeError(f"{done} of {done_so_far} throughput messages embedded")
                    drain = finished - ingested
                    drains.append(n / drain)
                    ends.append(n / (finished - began))
                    in_model.append(timed.seconds / drain)
                    overheads.append((drain - timed.seconds) / max(1, timed.calls) * 1000)
                    if profiler:
                        self._profile_dump(profiler, f"pipeline drain, batch {batch}")
            raw, drain_rate, end = statistics.median(raws), statistics.median(drains), statistics.median(ends)
            ratio = drain_rate / raw
            label = "configured" if batch == settings.EMBEDDING_BATCH_SIZE else "override_settings"
            self._add(
                Figure(
                    "1",
                    f"batch {batch} ({label}): model alone, embed() of {batch}",
                    f"{raw:,.0f} texts/s",
                    note=f"median of {len(raws)}: " + ", ".join(f"{value:,.0f}" for value in raws),
                    data={"batch": batch, "rate": raw, "samples": raws},
                )
            )
            if directs:
                here = statistics.median(directs)
                self._add(
                    Figure(
                        "1",
                        f"batch {batch}: the same model in this process (no child process), embed() of {batch}",
                        f"{here:,.0f} texts/s (the pipeline: {drain_rate / here:.0%} of it)",
                        note=f"median of {len(directs)}: " + ", ".join(f"{value:,.0f}" for value in directs),
                        data={"batch": batch, "rate": here, "samples": directs, "ratio": drain_rate / here},
                    )
                )
            self._add(
                Figure(
                    "1",
                    f"batch {batch}: pipeline (claim, cache, model, store)",
                    f"{drain_rate:,.0f} texts/s = {ratio:.0%} of the model alone",
                    target=">= 85% of the model alone",
                    verdict=verdict(ratio >= 0.85),
                    note=f"model busy {statistics.median(in_model):.0%} of the drain; "
                    f"{statistics.median(overheads):.1f} ms of other work per batch; "
                    f"ingest + drain {end:,.0f} texts/s",
                    data={
                        "batch": batch,
                        "rate": drain_rate,
                        "ratio": ratio,
                        "end_to_end_rate": end,
                        "model_share": statistics.median(in_model),
                        "overhead_ms_per_batch": statistics.median(overheads),
                        "samples": drains,
                    },
                )
            )

    def _profile_dump(self, profiler: cProfile.Profile, what: str) -> None:
        assert self.plan.profile_path is not None
        path = f"{self.plan.profile_path}.{what.split()[-1]}"
        profiler.dump_stats(path)
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
        self.write(f"\n  cProfile of the {what} -> {path}\n{text.getvalue()}")

    def _analyze(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                f"ANALYZE {Conversation._meta.db_table}, {Message._meta.db_table}, {MessageEmbedding._meta.db_table}"
            )

    # --- 2. acknowledgement to searchable ---------------------------------------------------------

    def _latency(self) -> None:
        if not self.pipeline_ok:
            return
        if settings.Q_CLUSTER.get("orm") is None:
            self.write("  skipped: the cluster is measured on the ORM broker, and this process enqueues elsewhere")
            return
        tenant = self._tenant("latency")
        rate, plan = self.plan.rate, self.plan
        pool = _shuffled(banking77("test"), SEED + 1)
        warm_count = int(rate * plan.latency_warmup_seconds)
        count = int(rate * plan.latency_seconds)
        texts = [f"{pool[i % len(pool)]} ~{self.tag}l{i}" for i in range(warm_count + count)]
        self.cached_texts.update(text_normalize(text) for text in texts)
        payloads = [
            InboundMessageIn.model_validate(
                {"user_id": f"u{i % 50}", "session_id": f"{self.tag}-l{i % 50}", "text": text}
            )
            for i, text in enumerate(texts)
        ]
        env = {
            **{k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DJANGO_SETTINGS_MODULE"}},
            "DJANGO_SETTINGS_MODULE": settings.SETTINGS_MODULE,
            "DATABASE_URL": benchmark_database_url(),
            "Q_BROKER": "orm",
            "Q_WORKERS": str(plan.q_workers),
            "EMBEDDING_BATCH_SIZE": str(plan.latency_batch_size),
        }
        log = self.data_dir / f"{self.run_id}-qcluster.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        table = Message._meta.db_table

        with psycopg.connect(benchmark_database_url(), autocommit=True) as poll_connection:

            def fetch_done(ids: list[Any]) -> list[Any]:
                rows = poll_connection.execute(
                    f"SELECT id FROM {table} WHERE id = ANY(%s) AND embedding_state = 'done'", [ids]
                ).fetchall()
                return [row[0] for row in rows]

            poller = DonePoller(fetch_done, interval=POLL_SECONDS)
            poller.start()
            self.write(
                f"  starting qcluster: Q_WORKERS={plan.q_workers}, EMBEDDING_BATCH_SIZE={plan.latency_batch_size}, "
                f"ORM broker, {settings.SETTINGS_MODULE} (log: {log})"
            )
            try:
                with QCluster(manage_py=BASE_DIR / "manage.py", env=env, log_path=log) as cluster:
                    began = time.perf_counter()
                    for index in paced(rate, warm_count, began=began):
                        poller.watch(message_ingest(tenant=tenant, payload=payloads[index]).id)
                    self._wait(lambda: poller.outstanding == 0, 180, "the warm-up messages to be embedded", cluster)
                    self._wait(self._queue_quiet, 180, "the task queue to settle", cluster)
                    self.write(
                        f"  warm-up: {warm_count} messages embedded, cluster ready "
                        f"{time.perf_counter() - began:.1f} s after start"
                    )
                    acks: dict[Any, tuple[float, float]] = {}
                    cpu_before = cpu_times()
                    began = time.perf_counter()
                    for index in paced(rate, count, began=began):
                        accepted = message_ingest(tenant=tenant, payload=payloads[warm_count + index])
                        acks[accepted.id] = (time.perf_counter(), time.time())
                        poller.watch(accepted.id)
                    sent = time.perf_counter() - began
                    self._wait(lambda: poller.outstanding == 0, 120, "every measured message to be embedded", cluster)
                    busy = cpu_busy_since(cpu_before)
            finally:
                poller.stop()
            if poller.error is not None:
                raise RuntimeError(f"the poller failed: {poller.error!r}") from poller.error

        observed = [poller.seen[item] - ack for item, (ack, _) in acks.items() if item in poller.seen]
        stamped = self._stamped_latencies(acks)
        summary = summarize(observed)
        self._add(
            Figure(
                "2",
                f"ack -> searchable at {rate:g} msg/s, polled every {POLL_SECONDS * 1000:.0f} ms",
                f"p50 {summary.p50 / 1000:.2f} s / p95 {summary.p95 / 1000:.2f} s / p99 {summary.p99 / 1000:.2f} s "
                f"(max {summary.max / 1000:.2f} s, n={summary.count})",
                target="p95 < 2 s",
                verdict=verdict(summary.p95 < 2000),
                note=f"{count} msgs sent in {sent:.1f} s ({count / sent:.1f}/s); cold cache; "
                f"Q_WORKERS={plan.q_workers}, batch {plan.latency_batch_size}; cpu {busy or 0:.0%}",
                latency=summary,
                data={"rate": rate, "sent_seconds": sent, "cpu_busy": busy, "polls": poller.polls},
            )
        )
        if stamped:
            lower = summarize(stamped)
            self._add(
                Figure(
                    "2",
                    "  same, from the vector row's DB timestamp (lower bound)",
                    f"p50 {lower.p50 / 1000:.2f} s / p95 {lower.p95 / 1000:.2f} s / p99 {lower.p99 / 1000:.2f} s",
                    note="statement_timestamp() of the INSERT storing the vector, just before its commit",
                    latency=lower,
                )
            )

    def _stamped_latencies(self, acks: dict[Any, tuple[float, float]]) -> list[float]:
        assert self.space is not None
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT item_id, extract(epoch FROM created_at) FROM {MessageEmbedding._meta.db_table} "
                "WHERE space_id = %s AND item_id = ANY(%s)",
                [self.space.pk, list(acks)],
            )
            stamps = dict(cursor.fetchall())
        return [float(stamps[item]) - wall for item, (_, wall) in acks.items() if item in stamps]

    def _queue_quiet(self) -> bool:
        from django_q.models import OrmQ

        return OrmQ.objects.count() <= 3 * max(1, settings.EMBEDDING_CONCURRENT_BATCHES)

    def _wait(self, condition: Callable[[], bool], timeout: float, what: str, cluster: QCluster) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if not cluster.alive():
                raise RuntimeError(f"the qcluster exited while waiting for {what}; see {cluster.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}; see {cluster.log_path}")
            time.sleep(0.05)

    # --- 4. the embedding cache, then search on those rows ------------------------------------------

    def _cache(self) -> None:
        if not self.pipeline_ok:
            return
        embedder = self._embedder()
        # Arrival order: intents interleaved, as in an inbox (the files are sorted by intent).
        texts = _shuffled(banking77("train") + banking77("test"), SEED + 2)
        texts = [f"{text} ~{self.tag}c" for text in texts[: self.plan.cache_texts]]
        self.cached_texts.update(text_normalize(text) for text in texts)
        tenant = self.cache_tenant = self._tenant("cache")
        users = ["u2000" if i < 2000 else f"u{i % 100}" for i in range(len(texts))]
        payloads = [
            InboundMessageIn.model_validate({"user_id": user, "session_id": f"{self.tag}-c-{user}", "text": text})
            for user, text in zip(users, texts, strict=True)
        ]
        before = self._cache_stats(embedder.model_id)
        timed = TimedEmbedder(embedder)
        began = time.perf_counter()
        for start in range(0, len(payloads), 1000):
            message_ingest_batch(tenant=tenant, payloads=payloads[start : start + 1000])
        ingested = time.perf_counter()
        embedding_drain(embedder=timed, seconds=1800)
        drained = time.perf_counter() - ingested
        after = self._cache_stats(embedder.model_id)
        hot, durable, misses = (after[i] - before[i] for i in range(3))
        lookups = hot + durable + misses
        distinct = len({text_normalize(text) for text in texts})
        self._add(
            Figure(
                "4",
                f"cache hit rate, {len(texts):,} Banking77 texts (train + test, shuffled), local model",
                f"{(hot + durable) / max(1, lookups):.2%} ({hot} hot + {durable} durable hits of {lookups:,} lookups)",
                note=f"{distinct:,} distinct of {len(texts):,} texts after normalisation "
                f"({1 - distinct / len(texts):.2%} repeats); model called for {misses:,} texts",
                data={
                    "hot_hits": hot,
                    "durable_hits": durable,
                    "misses": misses,
                    "texts": len(texts),
                    "distinct": distinct,
                },
            )
        )
        self._add(
            Figure(
                "4",
                f"pipeline throughput on those {len(texts):,} texts, batch {settings.EMBEDDING_BATCH_SIZE}",
                f"{len(texts) / drained:,.0f} texts/s (ingest {len(texts) / (ingested - began):,.0f}/s)",
                note=f"model busy {timed.seconds / drained:.0%} of the drain",
            )
        )
        self._search_pipeline_rows(tenant)

    def _cache_stats(self, model_id: str) -> tuple[int, int, int]:
        totals = EmbeddingCacheStats.objects.filter(model_id=model_id).aggregate(
            hot=Sum("hot_hits"), durable=Sum("durable_hits"), misses=Sum("misses")
        )
        return int(totals["hot"] or 0), int(totals["durable"] or 0), int(totals["misses"] or 0)

    def _search_pipeline_rows(self, tenant: Tenant) -> None:
        """In-process and HTTP search over the rows the pipeline just embedded into the active
        space (the HNSW index there was grown row by row, not built in bulk)."""
        assert self.space is not None
        space = self.space
        ids, matrix, users = self._load_rows(tenant, space)
        if not ids:
            return
        queries = self._query_vectors()
        cases = [("all rows", None), ("user with 2,000 msgs", "u2000")]
        for label, user in cases:
            rows = np.arange(len(ids)) if user is None else np.flatnonzero(users == user)
            self._search_case(
                section="4",
                label=f"{len(ids):,} pipeline rows, {label}",
                tenant=tenant,
                space=space,
                corpus=matrix,
                ids=ids,
                rows=rows,
                user=user,
                queries=queries[: self.plan.queries + self.plan.warmup_queries],
                target_ms=None,
            )
        self._http_search(tenant, space, queries, corpus=f"{len(ids):,} pipeline rows")

    def _load_rows(self, tenant: Tenant, space: EmbeddingSpace) -> tuple[list[Any], Matrix, np.ndarray[Any, Any]]:
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT e.item_id, e.embedding::text, c.external_user_id FROM {MessageEmbedding._meta.db_table} e "
                f"JOIN {Message._meta.db_table} m ON m.id = e.item_id "
                f"JOIN {Conversation._meta.db_table} c ON c.id = m.conversation_id "
                "WHERE e.tenant_id = %s AND e.space_id = %s",
                [tenant.pk, space.pk],
            )
            rows = cursor.fetchall()
        ids = [row[0] for row in rows]
        matrix = np.array([orjson.loads(row[1]) for row in rows], dtype=np.float32).reshape(len(rows), -1)
        return ids, matrix, np.array([row[2] for row in rows])

    def _http_search(self, tenant: Tenant, space: EmbeddingSpace, queries: Matrix, *, corpus: str) -> None:
        try:
            resolve("/api/v1/search")
        except Resolver404:
            self._add(Figure("3", "HTTP POST /api/v1/search", "not measured: the endpoint does not exist yet"))
            return
        active = EmbeddingSpace.objects.filter(state=SpaceState.ACTIVE).first()
        if active is None or active.pk != space.pk:
            self._add(Figure("3", "HTTP POST /api/v1/search", f"not measured: the active space is {active}"))
            return
        _, api_key = tenant_api_key_create(tenant=tenant, name="benchmark")
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "convo.settings.production",
            "DATABASE_URL": benchmark_database_url(),
            "SECURE_SSL_REDIRECT": "false",
            "SECRET_KEY": os.environ.get("SECRET_KEY") or secrets.token_urlsafe(64),
        }
        log = self.data_dir / f"{self.run_id}-gunicorn.log"
        n, warm = self.plan.queries, self.plan.warmup_queries
        server = GunicornServer(cwd=BASE_DIR, env=env, workers=self.plan.http_workers, log_path=log)
        self.write(f"  starting gunicorn ({server.workers} sync workers, production settings; log {log})")
        with server:
            client = JsonClient(server.host, server.port, api_key=api_key)
            try:
                for label, filters in (("all rows", {}), ("user with 2,000 msgs", {"user_id": "u2000"})):
                    # Distinct vectors (the result cache must miss); the test split has 3,080.
                    offset = 1000 if filters else 2000
                    vectors = queries[offset : offset + n + warm]
                    samples = []
                    cached = 0
                    for index, vector in enumerate(vectors):
                        body = orjson.dumps(
                            {"query": None, "vector": vector.tolist(), "k": K, "filters": filters},
                            option=orjson.OPT_SERIALIZE_NUMPY,
                        )
                        began = time.perf_counter()
                        status, answer = client.post("/api/v1/search", body)
                        elapsed = time.perf_counter() - began
                        if status != 200:
                            self._add(Figure("3", f"HTTP search, {label}", f"not measured: {status} {answer[:200]!r}"))
                            return
                        cached += bool(orjson.loads(answer).get("cached"))
                        if index >= warm:
                            samples.append(elapsed)
                    summary = summarize(samples)
                    self._add(
                        Figure(
                            "3",
                            f"HTTP POST /api/v1/search, {corpus}, {label}",
                            ms(summary),
                            target="p95 < 15 ms",
                            verdict=verdict(summary.p95 < 15),
                            note=f"gunicorn {server.workers} sync workers, 1 client, keep-alive; message_search "
                            f"(k={K}, {K * settings.SEARCH_CANDIDATE_FACTOR} candidates, hydrated, ranked); "
                            f"{cached} cached answers",
                            latency=summary,
                        )
                    )
            finally:
                client.close()

    # --- 3. search on bulk-loaded corpora ---------------------------------------------------------

    def _query_vectors(self) -> Matrix:
        embedder = self._embedder()
        texts = _shuffled(banking77("test"), SEED + 3)
        return vectors_cached(texts, model_id=embedder.model_id, embed=embedder.embed, cache_dir=self.data_dir)

    def _search(self) -> None:
        embedder = self._embedder()
        if embedder.dimensions != 384:
            self.write(f"  note: the corpus is embedded with {embedder!r} ({embedder.dimensions} dimensions)")
        began = time.perf_counter()
        train = banking77("train")[: self.plan.corpus_base]
        base = vectors_cached(train, model_id=embedder.model_id, embed=embedder.embed, cache_dir=self.data_dir)
        queries = self._query_vectors()
        self.write(
            f"  {base.shape[0]:,} Banking77 train texts and {queries.shape[0]:,} test queries embedded with "
            f"{embedder.model_id} ({time.perf_counter() - began:.1f} s, kept in {self.data_dir})"
        )
        for size in self.plan.sizes:
            self._search_size(size, base, queries, embedder)

    def _search_size(self, size: int, base: Matrix, queries: Matrix, embedder: Embedder) -> None:
        plan = self.plan
        corpus = corpus_from(base, size, sigma=plan.noise, seed=SEED + size)
        tenant = self._tenant(f"search{size}")
        # Retired: a space of its own that nothing else reads, and that the worker does not take
        # for the target of a model switch (it embeds every new item for a ``building`` space).
        space = EmbeddingSpace.objects.create(
            model_id=f"{self.run_id}:{size}:{embedder.model_id}", dimensions=corpus.shape[1], state=SpaceState.RETIRED
        )
        self.bench_spaces.append((space, tenant))
        users = _assign_users(size)
        self.write(
            f"\n  -- {size:,} rows: real vectors of {min(size, base.shape[0]):,} texts"
            + (f", then perturbed copies (sigma {plan.noise:g}, renormalised)" if size > base.shape[0] else "")
            + f"; tenant {tenant.slug}, space {space.pk}"
        )
        began = time.perf_counter()
        ids = self._bulk_load(
            tenant=tenant, space=space, corpus=corpus, users=users, texts=banking77("train")[: base.shape[0]]
        )
        loaded = time.perf_counter() - began
        notices: list[str] = []
        began = time.perf_counter()
        with no_statement_timeout(), _notices(notices):
            if plan.maintenance_work_mem:
                with connection.cursor() as cursor:  # this session only
                    cursor.execute("SELECT set_config('maintenance_work_mem', %s, false)", [plan.maintenance_work_mem])
            embedding_space_index(space=space)
        build = time.perf_counter() - began
        began = time.perf_counter()
        with no_statement_timeout(), connection.cursor() as cursor:
            for table in (Conversation, Message, MessageEmbedding):
                cursor.execute(f"ANALYZE {table._meta.db_table}")
            cursor.execute("SELECT pg_relation_size(%s)", [f"msg_hnsw_space_{space.pk}"])
            index_bytes = int(cursor.fetchone()[0])
        analyzed = time.perf_counter() - began
        self._add(
            Figure(
                "3",
                f"{size:,} rows: bulk load (COPY) / HNSW build / ANALYZE",
                f"{loaded:.1f} s / {build:.1f} s / {analyzed:.1f} s",
                note=f"index {index_bytes / 2**20:.0f} MiB, m={settings.EMBEDDING_HNSW_M}, "
                f"ef_construction={settings.EMBEDDING_HNSW_EF_CONSTRUCTION}, CREATE INDEX CONCURRENTLY"
                + (f"; server said: {' | '.join(notices)}" if notices else ""),
                data={"load_s": loaded, "build_s": build, "analyze_s": analyzed, "index_bytes": index_bytes},
            )
        )
        labels = {
            None: "all rows",
            "u0.1pct": "user with 0.1% of rows",
            "u1pct": "user with 1% of rows",
            "u10pct": "user with 10% of rows",
            "u2000": "user with 2,000 msgs",
        }
        for user, label in labels.items():
            rows = np.arange(size) if user is None else np.flatnonzero(users == user)
            if rows.size == 0:
                continue
            self._search_case(
                section="3",
                label=f"{size // 1000}k, {label} ({rows.size:,} rows)",
                tenant=tenant,
                space=space,
                corpus=corpus,
                ids=ids,
                rows=rows,
                user=user,
                queries=queries[: plan.queries + plan.warmup_queries],
                target_ms=5.0 if size >= 100_000 and user in {None, "u2000"} else None,
            )
        if size >= 100_000:
            self._http_search_bench_space(tenant=tenant, space=space, queries=queries, size=size)
        if not self.keep:  # the next size starts from a table without this one's rows
            self._drop_bench_space(space, tenant)

    def _http_search_bench_space(self, *, tenant: Tenant, space: EmbeddingSpace, queries: Matrix, size: int) -> None:
        """HTTP search over this size's bulk-loaded corpus. The API searches the active space, so
        the corpus's space stands in for it while gunicorn runs (the queries bring their vectors:
        no embedder is built for it), and the active space is put back afterwards."""
        label = f"HTTP POST /api/v1/search, {size // 1000}k"
        active = EmbeddingSpace.objects.filter(state=SpaceState.ACTIVE).first()
        if active is None or active.dimensions != space.dimensions:
            self._add(Figure("3", label, f"not measured: active is {active}"))
            return
        if Tenant.objects.exclude(slug__startswith="bench-").exists():
            # Everyone's searches would read the corpus's space meanwhile.
            self._add(Figure("3", label, "not measured: the database holds other tenants (use one of its own)"))
            return
        self._spaces_swap(active=space, retired=active)
        try:
            space.refresh_from_db()
            self._http_search(tenant, space, queries, corpus=f"{size // 1000}k bulk-loaded rows")
        finally:
            self._spaces_swap(active=active, retired=space)
            embedding_spaces_forget()

    @staticmethod
    @transaction.atomic
    def _spaces_swap(*, active: EmbeddingSpace, retired: EmbeddingSpace) -> None:
        """Make ``active`` the active space, under the lock an activation takes, so no worker batch
        decides against a space mid-swap."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SPACES_LOCK])
        EmbeddingSpace.objects.filter(pk=retired.pk).update(state=SpaceState.RETIRED)
        EmbeddingSpace.objects.filter(pk=active.pk).update(state=SpaceState.ACTIVE)

    def _search_case(
        self,
        *,
        section: str,
        label: str,
        tenant: Tenant,
        space: EmbeddingSpace,
        corpus: Matrix,
        ids: Sequence[Any],
        rows: np.ndarray[Any, Any],
        user: str | None,
        queries: Matrix,
        target_ms: float | None,
    ) -> None:
        warm = self.plan.warmup_queries
        filters = SearchFilters(user_id=user)
        position = {ids[row]: int(row) for row in rows}
        subset = corpus[rows]
        _, exact = exact_top_k(subset, queries, K)
        samples: list[float] = []
        recalls: list[float] = []
        strategies: Counter[str] = Counter()
        outside = 0  # results the filter should have excluded (never expected; counted as misses)
        for index, query in enumerate(queries):
            vector = query.tolist()
            began = time.perf_counter()
            found, strategy, _ = message_neighbours(tenant=tenant, space=space, vector=vector, filters=filters, limit=K)
            elapsed = time.perf_counter() - began
            if index < warm:
                continue
            samples.append(elapsed)
            strategies[strategy] += 1
            rows_found = [position.get(item) for item, _ in found]
            outside += sum(1 for row in rows_found if row is None)
            similarities = sorted((float(corpus[row] @ query) for row in rows_found if row is not None), reverse=True)
            recalls.append(recall_with_ties(similarities, [float(v) for v in exact[index]], k=K))
        summary = summarize(samples)
        recall = statistics.fmean(recalls)
        met: bool | None = None if target_ms is None else summary.p95 < target_ms and recall >= 0.95
        self._add(
            Figure(
                section,
                f"message_neighbours, {label}",
                f"{ms(summary)}; recall@{K} {recall:.3f} (min {min(recalls):.1f})",
                target=f"p95 < {target_ms:g} ms, recall >= 0.95" if target_ms is not None else "",
                verdict=verdict(met),
                note="strategy "
                + ", ".join(f"{name} x{count}" for name, count in strategies.most_common())
                + (f"; {outside} results OUTSIDE the filter" if outside else ""),
                latency=summary,
                data={"recall": recall, "strategies": dict(strategies), "rows": int(rows.size)},
            )
        )
        if self.plan.explain:
            self._explain(tenant=tenant, space=space, filters=filters, queries=queries[warm : warm + 50])

    def _explain(self, *, tenant: Tenant, space: EmbeddingSpace, filters: SearchFilters, queries: Matrix) -> None:
        """Where one ``message_neighbours`` call spends its time, statement by statement (median
        over the queries), and the plans of its statements for the first query."""
        per_statement: dict[str, list[float]] = {}
        totals: list[float] = []
        captured: list[tuple[str, Any]] = []
        for number, query in enumerate(queries):
            records: list[tuple[str, Any, float]] = []

            def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
                began = time.perf_counter()
                try:
                    return execute(sql, params, many, context)
                finally:
                    records.append((sql, params, time.perf_counter() - began))  # noqa: B023

            began = time.perf_counter()
            with connection.execute_wrapper(wrapper):
                message_neighbours(tenant=tenant, space=space, vector=query.tolist(), filters=filters, limit=K)
            totals.append(time.perf_counter() - began)
            for sql, _, seconds in records:
                per_statement.setdefault(_statement_kind(sql), []).append(seconds)
            if number == 0:
                captured = [(sql, params) for sql, params, _ in records]
        total = statistics.median(totals) * 1000
        parts = ", ".join(f"{kind} {statistics.median(v) * 1000:.2f}" for kind, v in per_statement.items())
        self.write(f"     per statement (median ms of {len(totals)} calls, total {total:.2f}): {parts}")
        with transaction.atomic(), connection.cursor() as cursor:
            for sql, params in captured:
                if sql.lstrip().upper().startswith("SET"):
                    cursor.execute(sql, params)
                    continue
                if not sql.lstrip().upper().startswith("SELECT COUNT") and "ORDER BY" not in sql:
                    continue
                cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
                lines = [_VECTOR_LITERAL.sub("'[...]'", row[0]) for row in cursor.fetchall()]
                plan = "\n".join(f"       {line}" for line in lines)
                self.write(f"     EXPLAIN (ANALYZE, BUFFERS) {_statement_kind(sql)}:\n{plan}")

    def _bulk_load(
        self,
        *,
        tenant: Tenant,
        space: EmbeddingSpace,
        corpus: Matrix,
        users: np.ndarray[Any, Any],
        texts: Sequence[str],
    ) -> list[uuid.UUID]:
        """Conversations (25 messages each, per user), messages (already ``done``) and their
        vectors, by COPY in one transaction of a connection of its own."""
        from convo.ids import uuid7

        size = corpus.shape[0]
        message_ids = [uuid7() for _ in range(size)]
        conversation_of = [uuid.UUID(int=0)] * size
        conversations: list[tuple[uuid.UUID, str]] = []
        order = np.argsort(users, kind="stable")
        current, filled, conversation = "", 0, uuid.UUID(int=0)
        for row in order:
            user = str(users[row])
            if user != current or filled == 25:
                conversation, current, filled = uuid7(), user, 0
                conversations.append((conversation, user))
            conversation_of[row] = conversation
            filled += 1
        with psycopg.connect(benchmark_database_url(), options="-c statement_timeout=0") as bulk:
            from pgvector.psycopg import register_vector

            register_vector(bulk)
            with bulk.cursor() as cursor:
                with cursor.copy(
                    f"COPY {Conversation._meta.db_table} (id, tenant_id, external_user_id, channel, status, summary, "
                    "transcript, metadata, embedding_state, ingest_fingerprint) FROM STDIN"
                ) as copy:
                    for conversation_id, user in conversations:
                        copy.write_row((conversation_id, tenant.pk, user, "web", "active", "", "", "{}", "skipped", ""))
                with cursor.copy(
                    f"COPY {Message._meta.db_table} (id, tenant_id, conversation_id, role, text, sender_name, "
                    "sender_avatar_url, embedding_state, embedding_attempts) FROM STDIN"
                ) as copy:
                    for row in range(size):
                        copy.write_row(
                            (
                                message_ids[row],
                                tenant.pk,
                                conversation_of[row],
                                "user",
                                texts[row % len(texts)],
                                "",
                                "",
                                "done",
                                1,
                            )
                        )
                with cursor.copy(
                    f"COPY {MessageEmbedding._meta.db_table} "
                    "(space_id, tenant_id, item_id, conversation_id, embedding) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(["int8", "int8", "uuid", "uuid", "vector"])
                    for row in range(size):
                        copy.write_row((space.pk, tenant.pk, message_ids[row], conversation_of[row], corpus[row]))
            bulk.commit()
        return message_ids

    # --- cleanup and reporting ----------------------------------------------------------------

    def _drop_bench_space(self, space: EmbeddingSpace, tenant: Tenant) -> None:
        began = time.perf_counter()
        with no_statement_timeout(), connection.cursor() as cursor:
            for prefix in ("msg", "conv"):
                cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {prefix}_hnsw_space_{int(space.pk)}")
            deleted = benchmark_tenant_rows_delete(tenant.pk)
        EmbeddingSpace.objects.filter(pk=space.pk).delete()
        self.tenants = [t for t in self.tenants if t.pk != tenant.pk]
        self.bench_spaces = [(s, t) for s, t in self.bench_spaces if s.pk != space.pk]
        rows = deleted.get(MessageEmbedding._meta.db_table, 0)
        self.write(
            f"  dropped space {space.pk} and tenant {tenant.slug} ({rows:,} vectors) in "
            f"{time.perf_counter() - began:.1f} s"
        )

    def cleanup(self) -> None:
        if self.keep:
            self.write(
                f"\nkept tenants {', '.join(t.slug for t in self.tenants)} and spaces "
                f"{', '.join(str(s.pk) for s, _ in self.bench_spaces)} (--keep)"
            )
            return
        began = time.perf_counter()
        for space, tenant in list(self.bench_spaces):
            self._drop_bench_space(space, tenant)
        counts: Counter[str] = Counter()
        with no_statement_timeout():
            for tenant in self.tenants:
                counts.update(benchmark_tenant_rows_delete(tenant.pk))
        keys = [cache_key(self._embedder().model_id, text) for text in self.cached_texts] if self.embedder else []
        cache_rows = 0
        for start in range(0, len(keys), 5000):
            cache_rows += EmbeddingCacheEntry.objects.filter(key__in=keys[start : start + 5000]).delete()[0]
        kicks = benchmark_kicks_delete(self.started_wall - timedelta(seconds=1))
        dropped_space = ""
        if self.space_created and self.space is not None:
            used = (
                MessageEmbedding.objects.filter(space=self.space).exists()
                or ConversationEmbedding.objects.filter(space=self.space).exists()
            )
            if not used:
                with connection.cursor() as cursor:
                    for prefix in ("msg", "conv"):
                        cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {prefix}_hnsw_space_{int(self.space.pk)}")
                EmbeddingSpace.objects.filter(pk=self.space.pk).delete()
                dropped_space = f"; the space {self.space.model_id} this run created (now empty) dropped"
            else:
                dropped_space = f"; the space {self.space.model_id} this run created holds other rows: kept"
        admission_cache_clear()
        self.write(
            f"\ndeleted {len(self.tenants)} tenants: "
            + ", ".join(f"{count:,} {table}" for table, count in counts.items() if count)
            + f"; {cache_rows:,} embedding cache entries; {kicks} queued kicks{dropped_space} "
            f"({time.perf_counter() - began:.1f} s)"
        )
        self.tenants = []

    def report(self) -> dict[str, Any]:
        return {
            "run": self.run_id,
            "environment": self.environment,
            "plan": asdict(self.plan),
            "figures": [
                {
                    **{k: v for k, v in asdict(figure).items() if k != "latency"},
                    "latency_ms": asdict(figure.latency) if figure.latency else None,
                }
                for figure in self.figures
            ],
        }

    def _environment(self) -> dict[str, Any]:
        with connection.cursor() as cursor:
            found = {}
            for name in (
                "server_version",
                "shared_buffers",
                "maintenance_work_mem",
                "max_parallel_maintenance_workers",
                "work_mem",
            ):
                cursor.execute(f"SHOW {name}")
                found[name] = cursor.fetchone()[0]
            cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            row = cursor.fetchone()
        cpu = "?"
        with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "?")
        import torch

        db = connection.settings_dict
        return {
            "cpus": f"{len(os.sched_getaffinity(0))} usable ({cpu}); torch threads {torch.get_num_threads()}",
            "load average": " / ".join(f"{value:.2f}" for value in os.getloadavg()) + " (1, 5, 15 min, at start)",
            "python / django": f"{platform.python_version()} / {django.get_version()}",
            "postgresql": f"{found['server_version']} + pgvector {row[0] if row else '?'}, db {db['NAME']}; "
            + ", ".join(f"{k}={v}" for k, v in found.items() if k != "server_version"),
            "settings": f"{settings.SETTINGS_MODULE}; EMBEDDING_BATCH_SIZE={settings.EMBEDDING_BATCH_SIZE}, "
            f"SEARCH_EXACT_SCAN_MAX_ROWS={settings.SEARCH_EXACT_SCAN_MAX_ROWS}, "
            f"ef_search {settings.SEARCH_EF_SEARCH_MIN}..{settings.SEARCH_EF_SEARCH_MAX}",
            "run": self.run_id,
        }


# --- helpers --------------------------------------------------------------------------------------


def _in_process_twin(embedder: Embedder) -> Embedder | None:
    """The configured local model loaded in this process, when the configured embedder runs it in
    a child process; else None."""
    if not isinstance(embedder, SentenceTransformerEmbedder) or embedder.model_process is None:
        return None
    return SentenceTransformerEmbedder(
        model=embedder.model,
        dimensions=embedder.dimensions,
        batch_size=embedder.batch_size,
        threads=embedder.model_process.threads,
    )


def _assign_users(size: int) -> np.ndarray[Any, Any]:
    """The owner of each row: users holding 0.1%, 1% and 10% of the rows, one with exactly 2,000
    (when the corpus is big enough), and the rest spread over users of 100 rows each; rows are
    dealt at random, so each user's messages are a random sample of the corpus."""
    owners = np.empty(size, dtype=object)
    rng = np.random.default_rng(SEED)
    order = rng.permutation(size)
    start = 0
    for user, count in (
        ("u0.1pct", max(1, round(size * 0.001))),
        ("u1pct", max(1, round(size * 0.01))),
        ("u10pct", max(1, round(size * 0.1))),
        ("u2000", 2000 if size >= 4000 else 0),
    ):
        owners[order[start : start + count]] = user
        start += count
    rest = order[start:]
    owners[rest] = [f"bg{i // 100}" for i in range(rest.size)]
    return owners


def _shuffled(items: list[str], seed: int) -> list[str]:
    return [items[i] for i in np.random.default_rng(seed).permutation(len(items))]


def _statement_kind(sql: str) -> str:
    text = " ".join(sql.split()).upper()
    if text.startswith("WITH MATCHING"):
        return "capped exact"
    if "SET_CONFIG('HNSW.EF_SEARCH'" in text:
        return "ef_search"
    if text.startswith("EXPLAIN"):
        return "estimate"
    if "ORDER BY" in text:
        return "knn exact" if "+ 0 LIMIT" in text else "knn hnsw"
    return text[:30].lower()


@contextlib.contextmanager
def _notices(into: list[str]) -> Iterator[None]:
    """Collect the server's notices (pgvector reports a graph outgrowing maintenance_work_mem)."""
    connection.ensure_connection()
    raw = connection.connection

    def handler(diagnostic: Any) -> None:
        into.append(str(diagnostic.message_primary))

    raw.add_notice_handler(handler)
    try:
        yield
    finally:
        raw.remove_notice_handler(handler)
