"""The measurements behind ``manage.py convo_benchmark_clustering``.

A benchmark, not a test: it prints figures and never fails on a missed aim. It runs on the
database the settings point at (the embedded server of ``convo.settings.local`` by default) under
throw-away tenants (``bench-clu-<timestamp>-…``) whose rows it deletes at the end, also on Ctrl-C
or SIGTERM (``--keep`` keeps them). docs/benchmarks.md shows the figures and how to read them.

1. Assignment latency: ``clusters_assign_embedded`` for one new inbound message, in a
   transaction of its own (the worker assigns inside the transaction that marks a batch done,
   and holds the tenant's clustering lock until it commits), with 100, 1k and 10k joinable
   clusters in the tenant. The clusters are bulk-loaded by COPY: random unit directions in the
   active embedding space (its dimensions), heavy-tailed sizes, real member messages and
   memberships, a tenth of them answered. Half of the timed messages lie near an existing
   cluster (they join it, by vector), half point anywhere (they start a cluster). Then, on the
   same tenant, batches of ``EMBEDDING_BATCH_SIZE`` messages per transaction (what the worker
   does), reported per message, and a few messages each assigned with no cluster matrix in the
   process (a worker's first batch for a tenant: the matrix is loaded whole).
2. Listing a first page: what the list view does without DRF (the list selectors and the JSON
   rendering) in-process, and ``GET /api/v1/clusters`` through DRF's ``APIClient`` in-process
   (no sockets), with the list cache off and on, over 100 and 1000 clusters.
3. Quality on Banking77: the 3,080 test questions, in a random order per seed, go through the
   real pipeline into a fresh tenant (``message_ingest_batch``, then ``embedding_drain`` with the
   active space's embedder, the bundled all-MiniLM-L6-v2 under the default settings, which embeds
   and assigns); the clusters are then scored against the intents (clustering/metrics.py).
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import re
import secrets
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from uuid import UUID

import django
import numpy as np
import numpy.typing as npt
import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext, override_settings
from django.urls import Resolver404, resolve
from rest_framework.test import APIClient

from clustering.demo import LabelledText, banking77_test
from clustering.metrics import adjusted_rand_index, clusters_covering, normalized_mutual_info, purity
from clustering.models import Cluster, ClusteringPolicy, ClusterMembership, ClusterStatus, JoinMethod
from clustering.services.assignment import EmbeddedMessage, clusters_assign_embedded, text_key
from clustering.services.matrix import ROW_COLUMNS, ClusterMatrix, cluster_matrices_clear
from conversations.embeddings import get_embedder
from conversations.models import (
    Conversation,
    EmbeddingCacheEntry,
    EmbeddingCacheStats,
    EmbeddingSpace,
    EmbeddingState,
    Message,
    MessageEmbedding,
    Tenant,
)
from conversations.payloads import InboundMessageIn
from conversations.services.admission import admission_cache_clear, pending_work_count
from conversations.services.embedding import embedding_drain
from conversations.services.embedding_cache import cache_key, text_normalize
from conversations.services.embedding_spaces import (
    embedding_space_active,
    embedding_space_active_embedder,
    embedding_space_for,
)
from conversations.services.ingest import message_ingest_batch
from conversations.services.results import Accepted
from conversations.services.tenants import tenant_api_key_create, tenant_create
from convo.api.renderers import FastJSONRenderer
from convo.benchmark_db import benchmark_database_url, benchmark_kicks_delete, benchmark_tenant_rows_delete
from convo.benchmarking import Summary, cpu_busy_since, cpu_times, render_lines, summarize
from convo.db import no_statement_timeout
from convo.ids import uuid7

Matrix = npt.NDArray[np.float32]

SEED = 20_260_404
# A timed message meant to join lies this far (Gaussian sigma per dimension) from its cluster's
# direction: cosine ~ 1 / sqrt(1 + d * sigma^2) ~ 0.82 at 384 dimensions, above any sane threshold.
NEAR_SIGMA = 0.035
ANSWERED_SHARE = 0.1
MAX_MEMBERS = 200  # the cap of the synthetic clusters' heavy-tailed sizes
USERS = 500  # authors of the synthetic members (one conversation each)
QUALITY_USERS = 1000  # authors of the Banking77 questions
COVER_SHARE = 0.8
# Printed with the figures (those the running code has), so a run says which rule it measured.
_ASSIGNMENT_SETTINGS = (
    "CLUSTER_SIMILARITY_THRESHOLD",
    "CLUSTER_WARMUP_SIMILARITY_THRESHOLD",
    "CLUSTER_CENTERING_MIN_MESSAGES",
    "CLUSTER_CANDIDATES",
    "CLUSTER_TEXT_SIMILARITY_THRESHOLD",
    "CLUSTER_SHORT_MESSAGE_CHARS",
    "CLUSTER_MATRIX_MAX_CLUSTERS",
    "CLUSTER_MATRIX_CACHE_ENTRIES",
    "CLUSTER_MATRIX_CACHE_MB",
    "CLUSTER_HNSW_INDEX",
    "CLUSTER_EXACT_SCAN_MAX",
)
COLD_MESSAGES = 5  # messages assigned each with no matrix in the process


@dataclass(frozen=True)
class Plan:
    """What one run measures; ``--quick`` shrinks it."""

    assign_sizes: tuple[int, ...]
    list_sizes: tuple[int, ...]
    messages: int  # timed assignments per size
    warmup: int
    list_requests: int
    seeds: tuple[int, ...]
    thresholds: tuple[float | None, ...]  # None: the configured CLUSTER_SIMILARITY_THRESHOLD
    limit: int | None  # Banking77 questions per quality run (all 3,080 when None)
    latency: bool
    quality: bool
    max_foreign_pending: int


@dataclass(frozen=True)
class LatencyRow:
    section: str
    what: str
    clusters: int
    latency: Summary | None
    note: str = ""


@dataclass(frozen=True)
class QualityRow:
    threshold: float
    seed: int
    messages: int
    clusters: int
    singletons: int
    nmi: float
    ari: float
    purity: float
    cover: int
    wall_seconds: float
    model_texts: int
    methods: dict[str, int] = field(default_factory=dict)
    unassigned: int = 0


class ClusteringBenchmark:
    """One run: tenants of its own, the sections in order, then ``cleanup``."""

    def __init__(self, *, plan: Plan, write: Callable[[str], Any], keep: bool = False) -> None:
        self.plan = plan
        self.write = write
        self.keep = keep
        self.run_id = f"bench-clu-{datetime.now(tz=UTC):%Y%m%d%H%M%S}-{secrets.token_hex(2)}"
        self.started = time.perf_counter()
        self.started_wall = datetime.now(tz=UTC)
        self.tenants: list[Tenant] = []
        self.latency_rows: list[LatencyRow] = []
        self.quality_rows: list[QualityRow] = []
        self.model_id = ""
        self.created_cache_keys: set[str] = set()
        self.environment: dict[str, str] = {}

    # --- orchestration ------------------------------------------------------------------------

    def run(self) -> None:
        self.environment = environment()
        for key, value in self.environment.items():
            self.write(f"{key:>16}: {value}")
        # DEBUG (on in convo.settings.local) would keep every query in memory and slow each one.
        with override_settings(DEBUG=False):
            if self.plan.latency:
                space = self._space()
                for size in self.plan.assign_sizes:
                    self._section(
                        f"1. assignment latency, {size:,} joinable clusters", partial(self._assign, space, size)
                    )
                for size in self.plan.list_sizes:
                    self._section(f"2. list clusters, {size:,} clusters", partial(self._listing, space, size))
            if self.plan.quality:
                self._section("3. quality on Banking77 through the real pipeline", self._quality)

    def _section(self, title: str, body: Callable[[], None]) -> None:
        self.write(f"\n== {title} ({time.perf_counter() - self.started:.0f} s into the run)")
        body()

    def _tenant(self, purpose: str) -> Tenant:
        slug = f"{self.run_id}-{purpose}"[:100]
        tenant = tenant_create(name=f"Benchmark {slug}", slug=slug)
        self.tenants.append(tenant)
        return tenant

    def _drop(self, tenant: Tenant) -> None:
        """Delete a tenant as soon as its measurement is done, so the next one runs on tables
        the size they would have without it (``cleanup`` catches whatever an interrupt left)."""
        if self.keep:
            return
        with no_statement_timeout():
            benchmark_tenant_rows_delete(tenant.pk)
        self.tenants = [t for t in self.tenants if t.pk != tenant.pk]

    def _space(self) -> EmbeddingSpace:
        space = embedding_space_active()
        if space is None:  # a fresh database: the configured model's space becomes the active one
            space = embedding_space_for(embedder=get_embedder(), config=settings.EMBEDDINGS)
        self.write(f"  active embedding space: {space.model_id} ({space.dimensions} dimensions, id {space.pk})")
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s", [f"cluster_hnsw_space_{space.pk}"])
            present = cursor.fetchone() is not None
        self.write(
            f"  HNSW index over its clusters (cluster_hnsw_space_{space.pk}): "
            + ("present: every cluster write updates it" if present else "absent")
        )
        return space

    # --- 1. assignment latency ----------------------------------------------------------------

    def _assign(self, space: EmbeddingSpace, size: int) -> None:
        rng = np.random.default_rng(SEED + size)
        tenant = self._tenant(f"assign{size}")
        began = time.perf_counter()
        centroids = self._synthetic_clusters(tenant, space, size, rng)
        self.write(f"  {size:,} clusters bulk-loaded in {time.perf_counter() - began:.1f} s")
        # Untimed first messages: warm the caches, and let a tenant-level running state that the
        # assignment keeps (e.g. a mean to centre on) leave its warm-up rule behind.
        warmup = max(self.plan.warmup, int(getattr(settings, "CLUSTER_CENTERING_MIN_MESSAGES", 0)))
        n = warmup + self.plan.messages
        items = self._near_or_anywhere(tenant, space, centroids, rng, n, seed=SEED + size, suffix=self.run_id)
        batch = max(1, int(settings.EMBEDDING_BATCH_SIZE))
        batches = max(20, self.plan.messages // 4)
        later = self._near_or_anywhere(
            tenant, space, centroids, rng, batch * batches + COLD_MESSAGES, seed=SEED - size, suffix=f"{self.run_id}b"
        )
        _analyze()

        methods: Counter[str] = Counter()
        samples: list[float] = []
        commits: list[float] = []
        timer = StatementTimer()
        cpu = cpu_times()
        with connection.execute_wrapper(timer), _timing_matrix_search(timer):
            for position, item in enumerate(items):
                timer.start_message()
                start = time.perf_counter()
                with transaction.atomic():
                    done = clusters_assign_embedded(space=space, items=[item])
                    decided = time.perf_counter()
                end = time.perf_counter()
                timer.end_message(keep=position >= warmup)
                if position >= warmup:
                    samples.append(end - start)
                    commits.append(end - decided)
                    methods.update(assignment.method for assignment in done)
        busy = cpu_busy_since(cpu)
        assigned = sum(methods.values())
        if assigned != self.plan.messages:
            raise RuntimeError(f"{assigned} of {self.plan.messages} timed messages were assigned")
        self._add(
            LatencyRow(
                "1",
                "clusters_assign_embedded, 1 message per transaction",
                size,
                summarize(samples),
                note=", ".join(f"{count} {method}" for method, count in sorted(methods.items()))
                + f" (after {warmup} untimed)"
                + (f"; cpu {busy:.0%}" if busy is not None else ""),
            )
        )
        self._add(
            LatencyRow(
                "1", "  of which the commit", size, summarize(commits), "includes the WAL flush (synchronous_commit on)"
            )
        )
        self._add(
            LatencyRow(
                "1",
                "  of which the reads under the tenant's lock",
                size,
                summarize(timer.samples[TENANT_READS]),
                "one round trip: the lock, thresholds, running mean, exact twins, the matrix's catch-up read",
            )
        )
        self._add(
            LatencyRow(
                "1",
                "  of which the in-process search (numpy over the matrix)",
                size,
                summarize(timer.samples[IN_PROCESS]),
                "every joinable cluster: a float32 pass, then float64 on the rows it cannot rule out",
            )
        )
        self._add(
            LatencyRow(
                "1",
                "  of which the nearest-cluster search in SQL (SELECT … <=>)",
                size,
                summarize(timer.samples[SEARCH]),
                _plan(timer.last_search),
            )
        )
        self._add(
            LatencyRow(
                "1",
                "  of which cluster writes (join or found, with the membership)",
                size,
                summarize(timer.samples[CLUSTER_WRITES]),
                "one statement (with the running mean's upsert); a new row version: every index is updated",
            )
        )
        self._add(
            LatencyRow(
                "1",
                "  of which the other statements",
                size,
                summarize(timer.samples[OTHER]),
                f"{statistics.median(timer.counts):.0f} statements per message in all (median)",
            )
        )
        measured = [sum(values) for values in zip(*timer.samples.values(), strict=True)]
        self._add(
            LatencyRow(
                "1",
                "  of which Python between the statements",
                size,
                summarize(
                    [total - commit - known for total, commit, known in zip(samples, commits, measured, strict=True)]
                ),
                "the rest: scoring arithmetic, rules, the transaction",
            )
        )

        per_message: list[float] = []
        batched: Counter[str] = Counter()
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT count(*) FROM {Cluster._meta.db_table} "
                "WHERE tenant_id = %s AND status IN ('open', 'answered')",
                [tenant.pk],
            )
            joinable = int(cursor.fetchone()[0])
        for start_at in range(0, batch * batches, batch):
            chunk = later[start_at : start_at + batch]
            began = time.perf_counter()
            with transaction.atomic():
                done = clusters_assign_embedded(space=space, items=chunk)
            per_message.append((time.perf_counter() - began) / len(chunk))
            batched.update(assignment.method for assignment in done)
        self._add(
            LatencyRow(
                "1",
                f"clusters_assign_embedded, batch of {batch} per transaction, per message",
                size,
                summarize(per_message),
                f"n = batches; {joinable:,} joinable clusters at the start; "
                + ", ".join(f"{count} {method}" for method, count in sorted(batched.items())),
            )
        )

        cold: list[float] = []
        for item in later[batch * batches :]:
            cluster_matrices_clear()
            began = time.perf_counter()
            with transaction.atomic():
                clusters_assign_embedded(space=space, items=[item])
            cold.append(time.perf_counter() - began)
        self._add(
            LatencyRow(
                "1",
                "1 message, no matrix in the process yet (full load)",
                size,
                summarize(cold),
                "a worker's first batch for the tenant, or after its matrix was dropped (LRU, cap)",
            )
        )
        self._drop(tenant)

    def _near_or_anywhere(
        self,
        tenant: Tenant,
        space: EmbeddingSpace,
        centroids: Matrix,
        rng: np.random.Generator,
        n: int,
        *,
        seed: int,
        suffix: str,
    ) -> list[EmbeddedMessage]:
        """``n`` stored, embedded inbound messages: every other one near a random cluster's
        direction (it joins), the rest pointing anywhere (it starts a cluster)."""
        joins = np.arange(n) % 2 == 0
        targets = rng.integers(0, len(centroids), n)
        vectors = rng.standard_normal((n, space.dimensions)).astype(np.float32)
        vectors[joins] = centroids[targets[joins]] + NEAR_SIGMA * vectors[joins]
        vectors = _unit_rows(vectors)
        return self._embedded_messages(tenant, space, _texts(n, seed=seed, suffix=suffix), vectors)

    def _synthetic_clusters(
        self, tenant: Tenant, space: EmbeddingSpace, count: int, rng: np.random.Generator
    ) -> Matrix:
        """``count`` joinable clusters with members, by COPY in one transaction of a connection of
        its own. Returns the clusters' unit directions."""
        centroids = _unit_rows(rng.standard_normal((count, space.dimensions)).astype(np.float32))
        sizes = np.minimum(rng.zipf(2.0, count), MAX_MEMBERS)
        answered = rng.random(count) < ANSWERED_SHARE
        pool = banking77_test()
        now = datetime.now(tz=UTC)
        conversation_ids = [uuid7() for _ in range(USERS)]  # one conversation per author
        messages: list[tuple[Any, ...]] = []
        clusters: list[tuple[Any, ...]] = []
        members: list[tuple[Any, ...]] = []
        for index in range(count):
            cluster_id = uuid7()
            founder: tuple[UUID, str] | None = None
            for member in range(int(sizes[index])):
                message_id = uuid7()
                text = f"{pool[int(rng.integers(len(pool)))].text} #{index}.{member}"
                messages.append(
                    (message_id, tenant.pk, conversation_ids[int(rng.integers(USERS))], "user", text, "", "", "done", 1)
                )
                members.append(
                    (
                        message_id,
                        cluster_id,
                        tenant.pk,
                        1.0 if member == 0 else float(rng.uniform(0.62, 0.95)),
                        JoinMethod.FOUNDER.value if member == 0 else JoinMethod.VECTOR.value,
                        text_key(text),
                        False,
                    )
                )
                if founder is None:
                    founder = (message_id, text)
            assert founder is not None
            last = now - timedelta(minutes=float(rng.uniform(0, 7 * 24 * 60)))
            first = last - timedelta(minutes=float(rng.uniform(0, 24 * 60)))
            status = ClusterStatus.ANSWERED.value if answered[index] else ClusterStatus.OPEN.value
            clusters.append(
                (
                    cluster_id,
                    tenant.pk,
                    space.pk,
                    founder[1][:120],
                    founder[0],
                    founder[1],
                    centroids[index] * float(sizes[index]),
                    int(sizes[index]),
                    first,
                    last,
                    status,
                    "Here is how: …" if answered[index] else "",
                    1 if answered[index] else 0,
                    "system" if answered[index] else "",
                    now if answered[index] else None,
                )
            )
        with psycopg.connect(benchmark_database_url(), options="-c statement_timeout=0") as bulk:
            from pgvector.psycopg import register_vector

            register_vector(bulk)
            with bulk.cursor() as cursor:
                _copy(
                    cursor,
                    Conversation,
                    "id, tenant_id, external_user_id, channel, status, summary, transcript, metadata, "
                    "embedding_state, ingest_fingerprint",
                    [
                        (cid, tenant.pk, f"bench-user-{i}", "web", "active", "", "", "{}", "skipped", "")
                        for i, cid in enumerate(conversation_ids)
                    ],
                )
                _copy(
                    cursor,
                    Message,
                    "id, tenant_id, conversation_id, role, text, sender_name, sender_avatar_url, embedding_state, "
                    "embedding_attempts",
                    messages,
                )
                _copy(
                    cursor,
                    Cluster,
                    "id, tenant_id, space_id, label, representative_id, representative_text, vector_sum, size, "
                    "first_message_at, last_message_at, status, answer, answer_version, answered_by, answered_at",
                    clusters,
                    types=[
                        "uuid",
                        "int8",
                        "int8",
                        "text",
                        "uuid",
                        "text",
                        "vector",
                        "int4",
                        "timestamptz",
                        "timestamptz",
                        "text",
                        "text",
                        "int4",
                        "text",
                        "timestamptz",
                    ],
                )
                _copy(
                    cursor,
                    ClusterMembership,
                    "message_id, cluster_id, tenant_id, similarity, method, text_key, answer_suggested",
                    members,
                )
            bulk.commit()
        return centroids

    def _embedded_messages(
        self, tenant: Tenant, space: EmbeddingSpace, texts: Sequence[str], vectors: Matrix
    ) -> list[EmbeddedMessage]:
        """Inbound messages through the ingest service, with their vectors stored, as the worker
        leaves them just before it assigns: ``done`` in the same transaction as the ingest, so
        no worker running meanwhile ever claims them."""
        payloads = [
            InboundMessageIn(user_id=f"bench-new-{i % 50}", session_id=self.run_id, text=text)
            for i, text in enumerate(texts)
        ]
        with transaction.atomic():
            results = message_ingest_batch(tenant=tenant, payloads=payloads, admission=False)
            ids = [result.id for result in results if isinstance(result, Accepted)]
            if len(ids) != len(texts):
                raise RuntimeError(f"{len(texts) - len(ids)} benchmark messages were rejected")
            Message.objects.filter(pk__in=ids).update(embedding_state=EmbeddingState.DONE, embedding_attempts=1)
            conversation_of = dict(Message.objects.filter(pk__in=ids).values_list("id", "conversation_id"))
            MessageEmbedding.objects.bulk_create(
                MessageEmbedding(
                    space=space,
                    tenant=tenant,
                    item_id=message_id,
                    conversation_id=conversation_of[message_id],
                    embedding=vector,
                )
                for message_id, vector in zip(ids, vectors, strict=True)
            )
        return [
            EmbeddedMessage(id=message_id, tenant_id=tenant.pk, vector=[float(x) for x in vector])
            for message_id, vector in zip(ids, vectors, strict=True)
        ]

    # --- 2. listing ---------------------------------------------------------------------------

    def _listing(self, space: EmbeddingSpace, size: int) -> None:
        tenant = self._tenant(f"list{size}")
        self._synthetic_clusters(tenant, space, size, np.random.default_rng(SEED - size))
        _analyze()
        page = int(settings.CONVO_DEFAULT_PAGE_SIZE)
        n, warmup = self.plan.list_requests, self.plan.warmup

        try:
            from clustering.selectors import cluster_list, cluster_previews
        except ImportError as exc:
            self._add(LatencyRow("2", "cluster_list + previews + JSON, in-process", size, None, f"not measured: {exc}"))
        else:
            preview = int(settings.CLUSTER_LIST_PREVIEW_MESSAGES)
            renderer = FastJSONRenderer()

            def in_process() -> None:
                """What the list view does for a first page, without DRF and the cache."""
                rows = list(cluster_list(tenant=tenant, status=None, ordering="-size")[:page])
                previews = cluster_previews(tenant=tenant, cluster_ids=[row["id"] for row in rows], limit=preview)
                renderer.render([{**row, "recent_messages": previews[row["id"]]} for row in rows])

            queries = _query_count(in_process)
            self._add(
                LatencyRow(
                    "2",
                    f"cluster_list + cluster_previews + JSON, page of {page}, in-process",
                    size,
                    summarize(_timed(in_process, n, warmup)),
                    note=f"{queries} queries; {preview} newest members per cluster",
                )
            )

        try:
            resolve("/api/v1/clusters")
        except Resolver404:
            self._add(LatencyRow("2", "GET /api/v1/clusters", size, None, "not measured: the route does not exist"))
            self._drop(tenant)
            return
        _, key = tenant_api_key_create(tenant=tenant, name="benchmark")
        client = APIClient(HTTP_HOST="localhost")
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
        seen: Counter[str] = Counter()

        def get() -> None:
            response = client.get("/api/v1/clusters")
            if response.status_code != 200:
                raise RuntimeError(f"GET /api/v1/clusters answered {response.status_code}: {response.content[:300]!r}")
            seen[response.headers.get("X-Cache", "-")] += 1

        with override_settings(CLUSTER_LIST_CACHE_SECONDS=0):
            queries = _query_count(get)
            seen.clear()
            self._add(
                LatencyRow(
                    "2",
                    "GET /api/v1/clusters, APIClient in-process, cache off",
                    size,
                    summarize(_timed(get, n, warmup)),
                    note=f"{queries} queries per request",
                )
            )
        ttl = max(int(settings.CLUSTER_LIST_CACHE_SECONDS), 60)
        with override_settings(CLUSTER_LIST_CACHE_SECONDS=ttl):
            _timed(get, warmup, 0)
            seen.clear()
            samples = _timed(get, n, 0)
            self._add(
                LatencyRow(
                    "2",
                    "GET /api/v1/clusters, APIClient in-process, cache on",
                    size,
                    summarize(samples),
                    note=f"timed answers by X-Cache: {dict(seen)} ({_cache_backend()}, {ttl} s)",
                )
            )
        self._drop(tenant)

    # --- 3. quality ---------------------------------------------------------------------------

    def _quality(self) -> None:
        admission_cache_clear()
        foreign = pending_work_count()
        if foreign > self.plan.max_foreign_pending:
            self.write(
                f"  skipped: {foreign:,} items of other tenants wait for embedding (--max-foreign-pending "
                f"{self.plan.max_foreign_pending}); the drain would embed them too"
            )
            return
        active = embedding_space_active_embedder()
        if active is None:
            self.write("  skipped: no embedding space is active")
            return
        space, embedder = active
        began = time.perf_counter()
        embedder.embed(["warm up the model"])
        self.model_id = space.model_id
        self.write(f"  embedder {embedder!r} of the active space ready in {time.perf_counter() - began:.1f} s")
        if space.model_id != get_embedder().model_id:
            self.write(f"  note: the active space is {space.model_id}, not the configured {get_embedder().model_id}")
        if foreign:
            began = time.perf_counter()
            drained = embedding_drain(seconds=600)
            seconds = time.perf_counter() - began
            self.write(f"  first embedded {drained} items of other tenants that were waiting ({seconds:.1f} s)")
        rows = list(banking77_test())
        if self.plan.limit:
            rows = random.Random(SEED).sample(rows, min(self.plan.limit, len(rows)))  # noqa: S311 - a benchmark sample
        self._remember_new_cache_keys(space.model_id, [row.text for row in rows])
        truth = [row.category for row in rows]
        reference = clusters_covering(truth, COVER_SHARE)
        self.write(
            f"  {len(rows):,} questions, {len(set(truth))} intents; the intents themselves: {reference} of them "
            f"hold {COVER_SHARE:.0%} of the questions"
        )
        for threshold in self.plan.thresholds:
            for seed in self.plan.seeds:
                self._quality_run(rows, seed=seed, threshold=threshold, model_id=space.model_id)

    def _quality_run(self, rows: Sequence[LabelledText], *, seed: int, threshold: float | None, model_id: str) -> None:
        order = list(rows)
        random.Random(seed).shuffle(order)  # noqa: S311 - a reproducible arrival order
        tag = "cfg" if threshold is None else f"t{threshold:g}".replace(".", "")
        tenant = self._tenant(f"q{tag}-s{seed}")
        if threshold is not None:
            ClusteringPolicy.objects.create(tenant=tenant, similarity_threshold=threshold)
        used = float(settings.CLUSTER_SIMILARITY_THRESHOLD if threshold is None else threshold)
        senders = random.Random(seed * 7919)  # noqa: S311
        payloads = [
            InboundMessageIn(
                user_id=f"customer-{senders.randrange(QUALITY_USERS)}",
                session_id="s",
                text=row.text,
                external_id=f"b77-{row.index}",
            )
            for row in order
        ]
        misses_before = self._model_misses(model_id)
        began = time.perf_counter()
        size = int(settings.CONVO_MAX_BATCH_ITEMS)
        for start in range(0, len(payloads), size):
            message_ingest_batch(tenant=tenant, payloads=payloads[start : start + size], admission=False)
        ingested = time.perf_counter()
        waiting = Message.objects.filter(
            tenant=tenant, embedding_state__in=[EmbeddingState.PENDING, EmbeddingState.PROCESSING]
        )
        deadline = time.monotonic() + 3600
        while waiting.exists() and time.monotonic() < deadline:
            if not embedding_drain(seconds=1800):
                time.sleep(0.1)  # a worker of the same database holds the rest: wait for it
        wall = time.perf_counter() - began
        model_texts = self._model_misses(model_id) - misses_before

        category = {f"b77-{row.index}": row.category for row in rows}
        assigned = dict(
            Message.objects.filter(tenant=tenant).values_list("external_id", "cluster_membership__cluster_id")
        )
        unassigned = sum(1 for cluster in assigned.values() if cluster is None)
        ids = [external_id for external_id in category if external_id in assigned]
        truth = [category[external_id] for external_id in ids]
        # An unclustered message (it failed to embed) counts as a cluster of its own.
        predicted = [assigned[external_id] or f"unassigned:{external_id}" for external_id in ids]
        sizes = Counter(predicted)
        methods = dict(Counter(ClusterMembership.objects.filter(tenant=tenant).values_list("method", flat=True)))
        row = QualityRow(
            threshold=used,
            seed=seed,
            messages=len(ids),
            clusters=len(sizes),
            singletons=sum(1 for count in sizes.values() if count == 1),
            nmi=normalized_mutual_info(truth, predicted),
            ari=adjusted_rand_index(truth, predicted),
            purity=purity(truth, predicted),
            cover=clusters_covering(predicted, COVER_SHARE),
            wall_seconds=wall,
            model_texts=model_texts,
            methods=methods,
            unassigned=unassigned,
        )
        self.quality_rows.append(row)
        self.write(
            f"  threshold {used:g}, seed {seed}: {row.clusters} clusters ({row.singletons} singletons), "
            f"NMI {row.nmi:.3f}, ARI {row.ari:.3f}, purity {row.purity:.3f}, {row.cover} clusters hold "
            f"{COVER_SHARE:.0%}; {wall:.1f} s (ingest {ingested - began:.1f} s, model called for {model_texts} "
            f"texts); joins: {', '.join(f'{n} {m}' for m, n in sorted(methods.items()))}"
            + (f"; {unassigned} not clustered" if unassigned else "")
        )
        self._drop(tenant)

    def _model_misses(self, model_id: str) -> int:
        total = EmbeddingCacheStats.objects.filter(model_id=model_id).aggregate(misses=Sum("misses"))["misses"]
        return int(total or 0)

    def _remember_new_cache_keys(self, model_id: str, texts: Sequence[str]) -> None:
        """The durable embedding-cache entries this run will create (those not there yet), so
        ``cleanup`` removes what the run added and nothing else."""
        keys = {cache_key(model_id, text_normalize(text)) for text in texts}
        present: set[str] = set()
        ordered = sorted(keys)
        for start in range(0, len(ordered), 5000):
            present.update(
                EmbeddingCacheEntry.objects.filter(key__in=ordered[start : start + 5000]).values_list("key", flat=True)
            )
        self.created_cache_keys |= keys - present

    # --- results ------------------------------------------------------------------------------

    def _add(self, row: LatencyRow) -> None:
        self.latency_rows.append(row)
        figures = (
            f"n={row.latency.count} p50={row.latency.p50:.2f} p95={row.latency.p95:.2f} "
            f"p99={row.latency.p99:.2f} max={row.latency.max:.1f} ms"
            if row.latency
            else ""
        )
        self.write(f"  {row.what}: {figures}" + (f" ({row.note})" if row.note else ""))

    def tables(self) -> str:
        out = []
        if self.latency_rows:
            out.append(self._latency_table())
        if self.quality_rows:
            out.append(f"quality on Banking77 test ({self.model_id}):" + self._quality_table())
        return "\n".join(out)

    def _latency_table(self) -> str:
        lines: list[tuple[str, ...]] = [
            ("#", "measurement", "clusters", "n", "p50 ms", "p95 ms", "p99 ms", "max ms", "note")
        ]
        for row in self.latency_rows:
            s = row.latency
            figures = (f"{s.count}", f"{s.p50:.2f}", f"{s.p95:.2f}", f"{s.p99:.2f}", f"{s.max:.1f}") if s else ("",) * 5
            lines.append((row.section, row.what, f"{row.clusters:,}", *figures, row.note))
        return render_lines(lines, numeric={2, 3, 4, 5, 6, 7})

    def _quality_table(self) -> str:
        lines: list[tuple[str, ...]] = [
            ("threshold", "seed", "messages", "clusters", "singletons", "NMI", "ARI", "purity",
             f"top clusters for {COVER_SHARE:.0%}", "wall s", "model texts")
        ]  # fmt: skip
        for threshold in dict.fromkeys(row.threshold for row in self.quality_rows):
            runs = [row for row in self.quality_rows if row.threshold == threshold]
            for run in runs:
                lines.append(
                    (f"{run.threshold:g}", str(run.seed), f"{run.messages:,}", f"{run.clusters:,}",
                     f"{run.singletons:,}", f"{run.nmi:.3f}", f"{run.ari:.3f}", f"{run.purity:.3f}", str(run.cover),
                     f"{run.wall_seconds:.1f}", f"{run.model_texts:,}")
                )  # fmt: skip
            if len(runs) > 1:
                lines.append(
                    (f"{threshold:g}", "mean", f"{_mean(r.messages for r in runs):,.0f}",
                     f"{_mean(r.clusters for r in runs):,.1f}", f"{_mean(r.singletons for r in runs):,.1f}",
                     f"{_mean(r.nmi for r in runs):.3f}", f"{_mean(r.ari for r in runs):.3f}",
                     f"{_mean(r.purity for r in runs):.3f}", f"{_mean(r.cover for r in runs):.1f}",
                     f"{_mean(r.wall_seconds for r in runs):.1f}", f"{_mean(r.model_texts for r in runs):,.0f}")
                )  # fmt: skip
        return render_lines(lines, numeric=set(range(2, 11)))

    # --- cleanup ------------------------------------------------------------------------------

    def cleanup(self) -> None:
        if self.keep:
            if self.tenants:
                self.write(f"\nkept tenants {', '.join(t.slug for t in self.tenants)} (--keep)")
            return
        began = time.perf_counter()
        counts: Counter[str] = Counter()
        with no_statement_timeout():
            for tenant in self.tenants:
                counts.update(benchmark_tenant_rows_delete(tenant.pk))
        dropped = len(self.tenants)
        self.tenants = []
        keys = sorted(self.created_cache_keys)
        cache_rows = 0
        for start in range(0, len(keys), 5000):
            cache_rows += EmbeddingCacheEntry.objects.filter(key__in=keys[start : start + 5000]).delete()[0]
        kicks = benchmark_kicks_delete(self.started_wall - timedelta(seconds=1))
        admission_cache_clear()
        self.write(
            f"\ncleanup: {dropped} tenants left to delete"
            + (": " + ", ".join(f"{count:,} {table}" for table, count in counts.items() if count) if counts else "")
            + f"; {cache_rows:,} embedding cache entries this run added; {kicks} queued embedding kicks dropped "
            f"({time.perf_counter() - began:.1f} s)"
        )


# --- helpers --------------------------------------------------------------------------------------


def environment() -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('server_version')")
        version = cursor.fetchone()
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "?")
    return {
        "cpus": f"{len(os.sched_getaffinity(0))} usable ({cpu})",
        "load average": " / ".join(f"{value:.2f}" for value in os.getloadavg()) + " (1, 5, 15 min, at start)",
        "python / django": f"{platform.python_version()} / {django.get_version()}",
        "postgresql": f"{version[0] if version else '?'}, database {connection.settings_dict['NAME']}",
        "settings": f"{settings.SETTINGS_MODULE} in-process (DEBUG forced off)",
        "clustering": ", ".join(
            f"{name.removeprefix('CLUSTER_')}={getattr(settings, name)}"
            for name in _ASSIGNMENT_SETTINGS
            if hasattr(settings, name)
        ),
        "embeddings": f"{settings.EMBEDDINGS['BACKEND'].rsplit('.', 1)[-1]} {settings.EMBEDDINGS.get('MODEL', '')}, "
        f"batch {settings.EMBEDDING_BATCH_SIZE}",
    }


def _timed(call: Callable[[], Any], n: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(n):
        began = time.perf_counter()
        call()
        samples.append(time.perf_counter() - began)
    return samples


def _query_count(call: Callable[[], Any]) -> int:
    with CaptureQueriesContext(connection) as captured:
        call()
    return len(captured.captured_queries)


def _cache_backend() -> str:
    return str(settings.CACHES["default"]["BACKEND"]).rsplit(".", 1)[-1]


def _mean(values: Iterator[float] | Iterator[int]) -> float:
    return statistics.fmean(values)


def _unit_rows(matrix: Matrix) -> Matrix:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.asarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)


def _texts(n: int, *, seed: int, suffix: str) -> list[str]:
    """``n`` Banking77 questions, each made unique (no exact twin in the tenant)."""
    pool = banking77_test()
    rng = random.Random(seed)  # noqa: S311
    return [f"{pool[rng.randrange(len(pool))].text} ({suffix} {i})" for i in range(n)]


def _copy(
    cursor: psycopg.Cursor[Any],
    model: type[Any],
    columns: str,
    rows: Sequence[Sequence[Any]],
    types: list[str] | None = None,
) -> None:
    statement = f"COPY {model._meta.db_table} ({columns}) FROM STDIN"
    if types:
        statement += " (FORMAT BINARY)"
    with cursor.copy(statement) as copy:
        if types:
            copy.set_types(types)
        for row in rows:
            copy.write_row(row)


def _analyze() -> None:
    """Fresh planner statistics for the tables a measurement reads: a bulk load would otherwise
    be planned as the near-empty tables the last cleanup left."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"ANALYZE {Cluster._meta.db_table}, {ClusterMembership._meta.db_table}, {Message._meta.db_table}, "
            f"{Conversation._meta.db_table}"
        )


SEARCH, TENANT_READS, IN_PROCESS = "search", "tenant reads", "in-process search"
CLUSTER_WRITES, OTHER = "cluster writes", "other"
# An INSERT into or UPDATE of the clusters table, alone or inside a WITH (not of the memberships).
_CLUSTER_WRITE = re.compile(rf'(INSERT\s+INTO|UPDATE)\s+"?{Cluster._meta.db_table}"?(\s|\()', re.IGNORECASE)


class StatementTimer:
    """A ``connection.execute_wrapper`` that adds up, per message, the time of its statements by
    kind: the nearest-cluster search in SQL (a SELECT ordering by ``<=>``), the reads under the
    tenant's lock (sent with it) and the matrix's loads, writes to the clusters table, and the
    rest; and, through ``add``, the in-process search. It reads only the SQL sent, so it follows
    any change to the assignment's queries; the last SQL search is kept (with its parameters) to
    show its plan."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {
            kind: [] for kind in (SEARCH, TENANT_READS, IN_PROCESS, CLUSTER_WRITES, OTHER)
        }
        self.counts: list[int] = []
        self.last_search: tuple[str, Any] | None = None
        self._current: dict[str, float] = defaultdict(float)
        self._statements = 0

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        began = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            kind = statement_kind(sql)
            self._current[kind] += time.perf_counter() - began
            self._statements += 1
            if kind == SEARCH:
                self.last_search = (sql, params)

    def add(self, kind: str, seconds: float) -> None:
        self._current[kind] += seconds

    def start_message(self) -> None:
        self._current.clear()
        self._statements = 0

    def end_message(self, *, keep: bool) -> None:
        if keep:
            for kind, samples in self.samples.items():
                samples.append(self._current[kind])
            self.counts.append(self._statements)


def statement_kind(sql: str) -> str:
    if _CLUSTER_WRITE.search(sql):
        return CLUSTER_WRITES
    head = sql.lstrip()
    if head.upper().startswith(("SELECT", "WITH")) and "<=>" in sql:
        return SEARCH
    if "pg_advisory_xact_lock" in sql or head.startswith(f"SELECT {ROW_COLUMNS} FROM"):
        return TENANT_READS
    return OTHER


@contextlib.contextmanager
def _timing_matrix_search(timer: StatementTimer) -> Iterator[None]:
    """Time the in-process searches (``ClusterMatrix``'s scoring methods) into ``timer``."""
    names = ("nearest_by_cosine", "best_inner")
    originals = {name: getattr(ClusterMatrix, name) for name in names}

    def timed(method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                timer.add(IN_PROCESS, time.perf_counter() - began)

        return wrapper

    for name, method in originals.items():
        setattr(ClusterMatrix, name, timed(method))
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(ClusterMatrix, name, method)


def _plan(statement: tuple[str, Any] | None) -> str:
    """The plan nodes of EXPLAIN of a captured statement: an exact scan and a sort, or an index."""
    if statement is None:
        return "no SQL search ran (the matrix answered)"
    sql, params = statement
    nodes: list[str] = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", params)
        for (line,) in cursor.fetchall():
            node = line.strip().removeprefix("->").strip().split("  (")[0]
            if node and not node.startswith(("Sort Key", "Filter", "Index Cond", "Order By", "Recheck")):
                nodes.append(node)
    return "plan: " + " > ".join(nodes)
