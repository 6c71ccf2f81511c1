"""Print what recording one timing costs (ns per record), in-process and with Prometheus in
multi-process mode (as under ``make run``), and what one flush to the store costs."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from convo.env import BASE_DIR


class Command(BaseCommand):
    help = "Measure the cost of timing_record and timed() in ns per record (docs/operations.md)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--quick", action="store_true", help="20,000 records instead of 500,000.")
        parser.add_argument("--records", type=int, default=None)
        parser.add_argument(
            "--single-mode", action="store_true", help="Only this process's mode (no multi-process run)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        records: int = options["records"] or (20_000 if options["quick"] else 500_000)
        self._measure(records)
        if options["single_mode"] or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return
        with tempfile.TemporaryDirectory() as directory:
            environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
            command = [sys.executable, str(BASE_DIR / "manage.py"), "convo_benchmark_timings"]
            subprocess.run([*command, "--records", str(records)], env=environment, check=True)  # noqa: S603

    def _measure(self, records: int) -> None:
        from convo.monitoring.timing_stores import timing_store_default
        from convo.monitoring.timings import timed, timing_record, timings_discard, timings_flush

        mode = "multi-process" if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else "single-process"
        operations = ("search", "ingest_ack", "batch_insert", "embedding_call")
        timings_discard()
        durations = [0.0001 * (1 + i % 997) for i in range(1000)]  # spread over many buckets
        started = time.perf_counter_ns()
        for i in range(records):
            timing_record(operation=operations[i & 3], seconds=durations[i % 1000], ok=i % 50 != 0)
        per_record = (time.perf_counter_ns() - started) / records

        started = time.perf_counter_ns()
        for _ in range(records):
            with timed("context_build"):
                pass
        per_block = (time.perf_counter_ns() - started) / records

        started = time.perf_counter_ns()
        flushed = timings_flush()
        flush_ms = (time.perf_counter_ns() - started) / 1e6
        self.stdout.write(
            f"prometheus {mode}: timing_record {per_record:,.0f} ns/record, "
            f"with timed(): {per_block:,.0f} ns/block ({records:,} each); "
            f"flush of {flushed:,} timings to {timing_store_default().name}: {flush_ms:.1f} ms"
        )
