"""Measure the answer lookup on Banking77 and print the figures (feedback/benchmarking.py says
how; docs/knowledge.md and docs/benchmarks.md show them).

    manage.py convo_benchmark_knowledge                  # all 10,003 entries, all 3,080 questions
    manage.py convo_benchmark_knowledge --quick          # 20 entries per intent, 500 questions
    manage.py convo_benchmark_knowledge --answer-similarity 0.65 --agreement 0.7   # another trade-off
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from convo.benchmark_db import benchmark_kicks_delete
from convo.benchmarking_search import BANKING77_DIR
from feedback.benchmarking import KnowledgeBenchmark, labelled_rows, report_lines
from feedback.retrieval import Thresholds


class Command(BaseCommand):
    help = "Benchmark the knowledge answer lookup on Banking77: right, wrong and unanswered shares."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--data-dir", type=Path, default=BANKING77_DIR, help="Holds train.csv and test.csv.")
        parser.add_argument("--quick", action="store_true", help="20 entries per intent and 500 questions.")
        parser.add_argument("--per-intent", type=int, help="At most this many entries per intent.")
        parser.add_argument("--questions", type=int, help="Ask at most this many test questions.")
        parser.add_argument("--answer-similarity", type=float, help="Instead of KNOWLEDGE_ANSWER_MIN_SIMILARITY.")
        parser.add_argument("--agreement", type=float, help="Instead of KNOWLEDGE_ANSWER_MIN_AGREEMENT.")
        parser.add_argument("--suggest-similarity", type=float, help="Instead of KNOWLEDGE_SUGGEST_MIN_SIMILARITY.")
        parser.add_argument("--neighbours", type=int, help="Instead of KNOWLEDGE_LOOKUP_NEIGHBOURS.")

    def handle(self, *args: Any, **options: Any) -> None:
        directory: Path = options["data_dir"]
        if not (directory / "train.csv").exists() or not (directory / "test.csv").exists():
            raise CommandError(f"{directory} must hold Banking77's train.csv and test.csv (or set --data-dir)")
        quick = bool(options["quick"])
        per_intent = options["per_intent"] or (20 if quick else None)
        questions = options["questions"] or (500 if quick else None)
        defaults = Thresholds.from_settings()
        thresholds = Thresholds(
            answer_similarity=_given(options["answer_similarity"], defaults.answer_similarity),
            answer_agreement=_given(options["agreement"], defaults.answer_agreement),
            suggest_similarity=_given(options["suggest_similarity"], defaults.suggest_similarity),
            neighbours=options["neighbours"] or defaults.neighbours,
        )
        logging.getLogger("django-q").setLevel(logging.WARNING)
        logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
        run = KnowledgeBenchmark(
            train=labelled_rows(directory / "train.csv", per_intent=per_intent),
            test=_spread(labelled_rows(directory / "test.csv"), questions),
            thresholds=thresholds,
            write=self.stdout.write,
        )
        started = timezone.now()
        previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM cleans up like Ctrl-C
        try:
            try:
                report = run.run()
            finally:
                run.cleanup()
                _kicks_delete(started)
        finally:
            signal.signal(signal.SIGTERM, previous)
        self.stdout.write(report_lines(report))
        self.stdout.write("load average at the end: " + " / ".join(f"{value:.2f}" for value in os.getloadavg()))


def _given(value: float | None, default: float) -> float:
    return default if value is None else float(value)


def _spread(rows: list[Any], count: int | None) -> list[Any]:
    """``count`` rows spread evenly over the file (it is sorted by intent: the first 500 would
    cover a few intents only)."""
    if count is None or count >= len(rows):
        return rows
    step = len(rows) / count
    return [rows[int(i * step)] for i in range(count)]


def _kicks_delete(since: Any) -> None:
    benchmark_kicks_delete(since)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
