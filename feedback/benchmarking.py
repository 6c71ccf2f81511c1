"""The knowledge benchmark (``manage.py convo_benchmark_knowledge``): answer-lookup quality on
Banking77, through the real pipeline, against the real database.

Knowledge: one entry per *training example* (10,003), each answering with its intent's answer.
Why per example rather than one entry per intent: that is what a knowledge base grown from
corrections looks like (many phrasings of one question, each approved once), and it lets the
lookup's vote work as it does in production (entries with the same answer vote together). An
entry per intent built from "a few examples" would need an averaged or multi-question entry,
which convo's entries are not.

The run: a throw-away tenant (``bench-kb-<timestamp>``); the entries made by
``knowledge_entry_create`` (versions and all) and embedded by ``embedding_drain``, the worker's own
loop, with the active space's embedder (the bundled all-MiniLM-L6-v2 under the default settings);
then every test question (3,080) asked through ``knowledge_answer_lookup``, its vector from the
shared embedding cache (embedded first, in one batch, so the timings are of the lookup's database
work). Outcomes: *right* (answered with the question's intent), *wrong* (answered with another),
*suggested* (right or wrong), *no match*. The tenant's rows are deleted at the end, also on Ctrl-C.
"""

from __future__ import annotations

import csv
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from clustering.services.moderation import Actor
from conversations.models import EmbeddingSpace, Tenant
from conversations.services.embedding import embedding_drain
from conversations.services.embedding_cache import embed_texts_cached, text_normalize
from conversations.services.embedding_spaces import embedding_space_active_embedder
from conversations.services.tenants import tenant_create
from convo.benchmark_db import benchmark_tenant_rows_delete
from convo.benchmarking import Summary, render_lines, summarize
from convo.db import no_statement_timeout
from feedback.knowledge import knowledge_entry_create, knowledge_fields_clean
from feedback.models import KnowledgeEntry, LookupDecision
from feedback.retrieval import Thresholds, knowledge_answer_lookup

ACTOR = Actor(label="command:convo_benchmark_knowledge")
# Entries are written in transactions of this many (one commit per chunk, not per entry).
CHUNK = 500


@dataclass(frozen=True)
class Labelled:
    text: str
    intent: str


def labelled_rows(path: Path, *, limit: int | None = None, per_intent: int | None = None) -> list[Labelled]:
    """Rows of a Banking77-shaped CSV (``text``, ``category``), in file order, at most
    ``per_intent`` of each intent and ``limit`` in all."""
    rows: list[Labelled] = []
    seen: Counter[str] = Counter()
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            intent = row["category"]
            if per_intent is not None and seen[intent] >= per_intent:
                continue
            seen[intent] += 1
            rows.append(Labelled(row["text"], intent))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def intent_answer(intent: str) -> str:
    """The answer every entry of ``intent`` gives: one text per intent, so its entries vote together."""
    return f"Answer for {intent.replace('_', ' ')}."


@dataclass
class Outcome:
    questions: int = 0
    right: int = 0
    wrong: int = 0
    suggested_right: int = 0
    suggested_wrong: int = 0
    no_match: int = 0
    nearest_right: int = 0  # the nearest entry's intent, whatever the decision (1-NN accuracy)
    latencies: list[float] = field(default_factory=list)

    def share(self, count: int) -> float:
        return count / self.questions if self.questions else 0.0


@dataclass(frozen=True)
class Report:
    entries: int
    load_seconds: float
    embed_seconds: float
    space: str
    thresholds: Thresholds
    outcome: Outcome
    lookup: Summary | None


class KnowledgeBenchmark:
    def __init__(
        self,
        *,
        train: Sequence[Labelled],
        test: Sequence[Labelled],
        thresholds: Thresholds,
        write: Callable[[str], Any],
        drain_seconds: float = 3600.0,
    ) -> None:
        self.train, self.test, self.thresholds, self.write = train, test, thresholds, write
        self.drain_seconds = drain_seconds
        self.tenant: Tenant | None = None

    def run(self) -> Report:
        active = embedding_space_active_embedder()
        if active is None:
            raise RuntimeError("no embedding space is active")
        space, embedder = active
        self.write(f"  active embedding space: {space.model_id} ({space.dimensions} dimensions)")
        stamp = timezone.now().strftime("%Y%m%d%H%M%S%f")
        self.tenant = tenant_create(name=f"Benchmark knowledge {stamp}", slug=f"bench-kb-{stamp}")

        started = time.perf_counter()
        self._load(self.tenant)
        loaded = time.perf_counter()
        self.write(f"  {len(self.train):,} entries stored in {loaded - started:.1f} s; embedding them")
        self._embed(self.tenant)
        embedded = time.perf_counter()
        self.write(f"  embedded in {embedded - loaded:.1f} s; asking {len(self.test):,} questions")

        # The questions' vectors first, in one batch: the timings below are of the lookup itself.
        vectors = embed_texts_cached(
            embedder=embedder, texts=[text_normalize(row.text) for row in self.test], count=False
        ).vectors
        outcome = self._ask(self.tenant, space, vectors)
        return Report(
            entries=len(self.train),
            load_seconds=loaded - started,
            embed_seconds=embedded - loaded,
            space=space.model_id,
            thresholds=self.thresholds,
            outcome=outcome,
            lookup=summarize(outcome.latencies) if outcome.latencies else None,
        )

    def cleanup(self) -> None:
        if self.tenant is not None:
            with no_statement_timeout():  # a few statements over every table of the tenant
                benchmark_tenant_rows_delete(self.tenant.pk)
            self.tenant = None

    def _load(self, tenant: Tenant) -> None:
        for start in range(0, len(self.train), CHUNK):
            with transaction.atomic():
                for row in self.train[start : start + CHUNK]:
                    knowledge_entry_create(
                        tenant=tenant,
                        fields=knowledge_fields_clean(question=row.text, answer=intent_answer(row.intent)),
                        actor=ACTOR,
                        source="import",
                    )

    def _embed(self, tenant: Tenant) -> None:
        deadline = time.monotonic() + self.drain_seconds
        pending = KnowledgeEntry.objects.filter(tenant=tenant, embedding_state__in=["pending", "processing"])
        while pending.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"entries still pending after {self.drain_seconds:.0f} s")
            if not embedding_drain(seconds=60):
                time.sleep(0.5)  # another worker holds the last claims

    def _ask(self, tenant: Tenant, space: EmbeddingSpace, vectors: dict[str, list[float]]) -> Outcome:
        outcome = Outcome()
        answers = {intent_answer(intent): intent for intent in {row.intent for row in self.train}}
        for row in self.test:
            vector = vectors.get(text_normalize(row.text))
            if vector is None:
                continue
            started = time.perf_counter()
            found = knowledge_answer_lookup(tenant=tenant, space=space, vector=vector, thresholds=self.thresholds)
            outcome.latencies.append(time.perf_counter() - started)
            outcome.questions += 1
            if found.candidates and answers.get(found.candidates[0].entry.answer) == row.intent:
                outcome.nearest_right += 1
            right = found.entry is not None and answers.get(found.entry.answer) == row.intent
            if found.decision == LookupDecision.ANSWER:
                outcome.right += right
                outcome.wrong += not right
            elif found.decision == LookupDecision.SUGGEST:
                outcome.suggested_right += right
                outcome.suggested_wrong += not right
            else:
                outcome.no_match += 1
        return outcome


def report_lines(report: Report) -> str:
    """The figures as a table, each beside the issue's aim."""
    o, t = report.outcome, report.thresholds
    pct = lambda count: f"{100.0 * o.share(count):.1f}%"  # noqa: E731
    rows = [
        ["figure", "value", "aim"],
        ["questions asked", f"{o.questions:,}", ""],
        ["answered, right intent", pct(o.right), ">= 85%"],
        ["answered, wrong intent", pct(o.wrong), "< 5%"],
        ["suggested (right / wrong)", f"{pct(o.suggested_right)} / {pct(o.suggested_wrong)}", ""],
        ["no match", pct(o.no_match), ""],
        ["unanswered (suggested + no match)", pct(o.suggested_right + o.suggested_wrong + o.no_match), ""],
        ["nearest entry has the right intent", pct(o.nearest_right), ""],
    ]
    if report.lookup is not None:
        s = report.lookup
        rows.append(["lookup p50 / p95 / p99 (ms)", f"{s.p50:.1f} / {s.p95:.1f} / {s.p99:.1f}", ""])
    rows.append(
        [
            "entries / store s / embed s",
            f"{report.entries:,} / {report.load_seconds:.1f} / {report.embed_seconds:.1f}",
            "",
        ]
    )
    head = (
        f"answer lookup on Banking77, model {report.space}; thresholds: answer >= {t.answer_similarity} "
        f"with agreement >= {t.answer_agreement}, suggest >= {t.suggest_similarity}, {t.neighbours} neighbours"
    )
    return head + "\n" + render_lines(rows, numeric={1})
