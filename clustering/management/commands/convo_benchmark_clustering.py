"""Measure clustering against the real database and print the figures: assignment latency with
100, 1k and 10k joinable clusters, list latency, and quality on Banking77 through the real
pipeline (clustering/benchmarking.py explains each section; docs/benchmarks.md shows figures).

    manage.py convo_benchmark_clustering --quick              # 100 and 1k clusters, seed 1
    manage.py convo_benchmark_clustering                      # 100, 1k, 10k clusters, seeds 1,2,3
    manage.py convo_benchmark_clustering --skip-latency --threshold 0.55,0.6,0.65   # a sweep
"""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from clustering.benchmarking import ClusteringBenchmark, Plan


class Command(BaseCommand):
    help = "Benchmark cluster assignment and listing latency, and clustering quality on Banking77."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--quick", action="store_true", help="100 and 1k clusters, one seed.")
        parser.add_argument("--sizes", help="Joinable clusters for the assignment latency (100,1000,10000).")
        parser.add_argument("--list-sizes", help="Clusters for the list latency (100,1000).")
        parser.add_argument("--messages", type=int, default=200, help="Timed assignments per size (200).")
        parser.add_argument("--requests", type=int, default=200, help="Timed list calls per case (200).")
        parser.add_argument("--seeds", help="Arrival orders of the quality runs (1,2,3; quick: 1).")
        parser.add_argument(
            "--threshold",
            help="CLUSTER_SIMILARITY_THRESHOLD for the quality runs, or several for a sweep (0.55,0.6,0.65); "
            "set as the throw-away tenants' clustering policy. Default: the configured one.",
        )
        parser.add_argument("--limit", type=int, help="Banking77 questions per quality run (all 3,080).")
        parser.add_argument("--skip-quality", action="store_true", help="Latency only (no model needed).")
        parser.add_argument("--skip-latency", action="store_true", help="Quality only.")
        parser.add_argument(
            "--max-foreign-pending",
            type=int,
            default=1000,
            help="Skip the quality runs while more items of other tenants wait for embedding.",
        )
        parser.add_argument("--keep", action="store_true", help="Keep the benchmark tenants and their rows.")

    def handle(self, *args: Any, **options: Any) -> None:
        quick = bool(options["quick"])
        plan = Plan(
            assign_sizes=_ints(options["sizes"], (100, 1000) if quick else (100, 1000, 10_000)),
            list_sizes=_ints(options["list_sizes"], (100, 1000)),
            messages=options["messages"],
            warmup=20,
            list_requests=options["requests"],
            seeds=_ints(options["seeds"], (1,) if quick else (1, 2, 3)),
            thresholds=_floats(options["threshold"]) or (None,),
            limit=options["limit"],
            latency=not options["skip_latency"],
            quality=not options["skip_quality"],
            max_foreign_pending=options["max_foreign_pending"],
        )
        if plan.messages < 1 or plan.list_requests < 1 or (plan.limit is not None and plan.limit < 2):
            raise CommandError("--messages and --requests must be at least 1, --limit at least 2")
        logging.getLogger("django-q").setLevel(logging.WARNING)
        logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
        previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM cleans up like Ctrl-C
        run = ClusteringBenchmark(plan=plan, write=self.stdout.write, keep=bool(options["keep"]))
        try:
            try:
                run.run()
            finally:
                run.cleanup()
        finally:
            signal.signal(signal.SIGTERM, previous)
        self.stdout.write(run.tables())
        self.stdout.write("load average at the end: " + " / ".join(f"{value:.2f}" for value in os.getloadavg()))


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _ints(value: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    if not value:
        return default
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError as exc:
        raise CommandError(f"expected comma-separated integers, got {value!r}") from exc


def _floats(value: str | None) -> tuple[float | None, ...]:
    if not value:
        return ()
    try:
        thresholds = tuple(float(part) for part in value.split(",") if part.strip())
    except ValueError as exc:
        raise CommandError(f"expected comma-separated numbers, got {value!r}") from exc
    if not all(0 <= threshold <= 1 for threshold in thresholds):
        raise CommandError("thresholds are cosine similarities between 0 and 1")
    return thresholds
