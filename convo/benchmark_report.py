"""One report from every benchmark: the machine, each command's own table, and a summary of the
key figures beside the seeds' own targets (``manage.py convo_benchmark_all``, docs/benchmarks.md).

The figures come from each command's ``--json`` file where it has one (ingest, embeddings), and
otherwise from its printed tables (clustering, knowledge), parsed by ``tables_parse``: every
benchmark prints with ``convo.benchmarking.render_lines``, a header line, a ``-+-`` rule and
``" | "``-separated cells. A figure that a run did not produce reads "not measured", never a guess.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import django
from django.conf import settings
from django.db import connection

NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class BenchmarkRun:
    """One benchmark command's run: what it printed, its JSON figures (if it writes them)."""

    command: str
    argv: tuple[str, ...]
    output: str
    figures: dict[str, Any] | None
    seconds: float
    error: str = ""


@dataclass(frozen=True)
class SummaryRow:
    figure: str
    measured: str
    target: str
    command: str


# --- the machine ----------------------------------------------------------------------------------


def machine_describe() -> dict[str, str]:
    """Where the figures were measured: they mean little without the machine and its load."""
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "?")
    ram = "?"
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as handle:
        kib = next(int(line.split()[1]) for line in handle if line.startswith("MemTotal:"))
        ram = f"{kib / 2**20:.1f} GiB"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('server_version'), (SELECT extversion FROM pg_extension WHERE extname = 'vector')"
        )
        row = cursor.fetchone()
    return {
        "date": datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": f"{len(os.sched_getaffinity(0))} usable of {os.cpu_count()}",
        "ram": ram,
        "load average": " / ".join(f"{value:.2f}" for value in os.getloadavg()) + " (1, 5, 15 min, at the start)",
        "postgresql": f"{row[0] if row else '?'}, pgvector {row[1] if row and row[1] else '?'}",
        "python / django": f"{platform.python_version()} / {django.get_version()}",
        "settings": str(settings.SETTINGS_MODULE),
    }


# --- parsing what the commands print ----------------------------------------------------------------

_RULE = re.compile(r"^-+(-\+-+)*$")


def tables_parse(text: str) -> list[list[dict[str, str]]]:
    """Every ``render_lines`` table in ``text``, as rows keyed by the header's cells. A table
    ends at the first line that is blank or has a different number of cells."""
    lines = text.splitlines()
    tables: list[list[dict[str, str]]] = []
    for index in range(1, len(lines)):
        if not _RULE.match(lines[index].strip()):
            continue
        header = _cells(lines[index - 1])
        rows: list[dict[str, str]] = []
        for line in lines[index + 1 :]:
            cells = _cells(line)
            if not line.strip() or len(cells) > len(header):
                break
            cells += [""] * (len(header) - len(cells))  # trailing empty cells are stripped
            rows.append(dict(zip(header, cells, strict=True)))
        tables.append(rows)
    return tables


def _cells(line: str) -> list[str]:
    # render_lines strips the line's end, so an empty last cell leaves a bare " |": the added
    # space gives it back its separator.
    return [cell.strip() for cell in (line + " ").split(" | ")]


def table_rows(run: BenchmarkRun | None) -> list[dict[str, str]]:
    """All rows of all of a run's tables."""
    if run is None:
        return []
    return [row for table in tables_parse(run.output) for row in table]


# --- the seeds' targets -----------------------------------------------------------------------------
# Quoted from /work/shared/seeds (the documents convo was described from). Where a seed gives no
# target for a figure, its own "current performance" is quoted and marked as such.

SEED_ACK = "< 10 ms (seed 000: queue a conversation; alert > 20 ms p95)"
SEED_INSERT = "< 10 ms (seed 001: single conversation insert)"
SEED_BATCH = "< 100 ms (seed 001: batch insert of 100 conversations)"
SEED_INGEST_RATE = "200 msg/s per API server, 5,000 msg/s with 10 (seed 002); 100+ conversations/s (seed 000)"
SEED_EMBED = "< 200 ms per embedding call p95, alert > 500 ms (seed 000); 1 msg/s sync POC (seed 002)"
SEED_LAG = "batches every 5 s, forced after 30 s (seed 000's processor)"
SEED_CACHE = "> 30 %, alert < 20 % (seed 000); 30-50 % (seed 002)"
SEED_SEARCH = "< 50 ms (seed 001: vector similarity search); POC 25 ms at 10k, 100 ms at 1M (seed 002)"
SEED_LIST = "15 ms p95 (seed 002: list clusters)"
SEED_NONE = "no seed target"


# --- the summary ------------------------------------------------------------------------------------


def _p95_ms(latency: dict[str, Any] | None) -> str:
    if not latency:
        return NOT_MEASURED
    return f"p95 {latency['p95']:.2f} ms (p50 {latency['p50']:.2f}, n={latency['count']})"


def _items(run: BenchmarkRun | None, key: str) -> list[dict[str, Any]]:
    if run is None or not run.figures:
        return []
    return list(run.figures.get(key) or [])


def _first(items: Iterable[dict[str, Any]], match: Callable[[str], bool]) -> dict[str, Any] | None:
    return next((item for item in items if match(str(item.get("name", "")))), None)


def ingest_summary(run: BenchmarkRun | None) -> list[SummaryRow]:
    rows = _items(run, "rows")
    message = _first(rows, lambda name: name.startswith("message_ingest,"))
    create = _first(rows, lambda name: name.startswith("conversation_create,"))
    http = _first(rows, lambda name: name.startswith("HTTP POST /messages"))
    batch = _first(rows, lambda name: name.startswith("storage: conversation_create_batch 100 "))
    bulk = _first(rows, lambda name: name.startswith("bulk:"))
    rate = f"{bulk['rate']:,.0f} msg/s ({bulk['name']})" if bulk and bulk.get("rate") else NOT_MEASURED
    name = "convo_benchmark_ingest"
    return [
        SummaryRow(
            "ingest ack, `message_ingest` in-process", _p95_ms(message and message["latency_ms"]), SEED_ACK, name
        ),
        SummaryRow(
            "ingest ack, `conversation_create` (1 + 3 messages) in-process",
            _p95_ms(create and create["latency_ms"]),
            SEED_INSERT,
            name,
        ),
        SummaryRow(
            f"ingest ack over HTTP ({http['name'].removeprefix('HTTP ')})" if http else "ingest ack over HTTP",
            _p95_ms(http and http["latency_ms"]),
            SEED_ACK,
            name,
        ),
        SummaryRow(
            "batch insert, 100 conversations (storage)", _p95_ms(batch and batch["latency_ms"]), SEED_BATCH, name
        ),
        SummaryRow("bulk ingest throughput, one node", rate, SEED_INGEST_RATE, name),
    ]


def embeddings_summary(run: BenchmarkRun | None) -> list[SummaryRow]:
    figures = _items(run, "figures")
    name = "convo_benchmark_embeddings"
    pipeline = _first(figures, lambda text: ": pipeline (claim, cache, model, store)" in text)
    lag = _first(figures, lambda text: text.startswith("ack -> searchable"))
    cache = _first(figures, lambda text: text.startswith("cache hit rate"))
    searches = [f for f in figures if str(f.get("name", "")).startswith("message_neighbours,") and f.get("latency_ms")]
    rows = [
        SummaryRow(
            f"embedding throughput, one worker process ({pipeline['name'].split(':')[0]})"
            if pipeline
            else "embedding throughput",
            f"{pipeline['data']['rate']:,.0f} texts/s" if pipeline else NOT_MEASURED,
            SEED_EMBED,
            name,
        ),
        SummaryRow(
            "acknowledgement to searchable",
            _seconds(lag["latency_ms"]) if lag and lag.get("latency_ms") else NOT_MEASURED,
            SEED_LAG,
            name,
        ),
        SummaryRow(
            "embedding cache hit rate (Banking77)",
            str(cache["value"]).split(" ")[0] if cache else NOT_MEASURED,
            SEED_CACHE,
            name,
        ),
    ]
    if not searches:
        rows.append(SummaryRow("search, `message_neighbours` k=10", NOT_MEASURED, SEED_SEARCH, name))
    for figure in searches:
        label = str(figure["name"]).removeprefix("message_neighbours, ")
        rows.append(SummaryRow(f"search, {label}", _p95_ms(figure["latency_ms"]), SEED_SEARCH, name))
    http = _first(figures, lambda text: text.startswith("HTTP POST /api/v1/search,"))
    if http is not None:
        rows.append(
            SummaryRow(
                str(http["name"]).replace("HTTP POST /api/v1/search", "search over HTTP"),
                _p95_ms(http.get("latency_ms")),
                SEED_SEARCH,
                name,
            )
        )
    return rows


def _seconds(latency: dict[str, Any]) -> str:
    return f"p95 {latency['p95'] / 1000:.2f} s (p50 {latency['p50'] / 1000:.2f} s, n={latency['count']})"


def clustering_summary(run: BenchmarkRun | None) -> list[SummaryRow]:
    rows = table_rows(run)
    name = "convo_benchmark_clustering"

    def p95_at_largest(prefix: str) -> tuple[str, str]:
        found = [row for row in rows if row.get("measurement", "").startswith(prefix) and row.get("p95 ms")]
        if not found:
            return "", NOT_MEASURED
        row = max(found, key=lambda row: int(row.get("clusters", "0").replace(",", "") or 0))
        return row["clusters"], f"p95 {row['p95 ms']} ms (p50 {row['p50 ms']}, n={row['n']})"

    single_at, single = p95_at_largest("clusters_assign_embedded, 1 message per transaction")
    batch_at, batch = p95_at_largest("clusters_assign_embedded, batch of")
    list_at, listed = p95_at_largest("GET /api/v1/clusters, APIClient in-process, cache off")
    return [
        SummaryRow(
            f"cluster assignment, 1 message per transaction, {single_at or '?'} clusters", single, SEED_NONE, name
        ),
        SummaryRow(
            f"cluster assignment per message, worker batches, {batch_at or '?'} clusters", batch, SEED_NONE, name
        ),
        SummaryRow(f"`GET /api/v1/clusters` first page, {list_at or '?'} clusters, cache off", listed, SEED_LIST, name),
    ]


def knowledge_summary(run: BenchmarkRun | None) -> list[SummaryRow]:
    rows = {row.get("figure", ""): row.get("value", "") for row in table_rows(run)}
    name = "convo_benchmark_knowledge"
    lookup = rows.get("lookup p50 / p95 / p99 (ms)", "")
    parts = lookup.split(" / ")
    return [
        SummaryRow(
            "knowledge answer lookup",
            f"p95 {parts[1]} ms (p50 {parts[0]})" if len(parts) == 3 else NOT_MEASURED,
            SEED_NONE,
            name,
        ),
        SummaryRow(
            "questions answered with the right intent (Banking77)",
            rows.get("answered, right intent") or NOT_MEASURED,
            SEED_NONE,
            name,
        ),
    ]


SUMMARIES: dict[str, Callable[[BenchmarkRun | None], list[SummaryRow]]] = {
    "convo_benchmark_ingest": ingest_summary,
    "convo_benchmark_embeddings": embeddings_summary,
    "convo_benchmark_clustering": clustering_summary,
    "convo_benchmark_knowledge": knowledge_summary,
}


def summary_rows(runs: list[BenchmarkRun]) -> list[SummaryRow]:
    """The key figures of the runs, in the order of SUMMARIES (only for the commands that ran)."""
    by_command = {run.command: run for run in runs}
    rows: list[SummaryRow] = []
    for command, summarize in SUMMARIES.items():
        if command in by_command:
            rows.extend(summarize(by_command[command]))
    return rows


# --- the markdown -----------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def report_render(*, machine: dict[str, str], runs: list[BenchmarkRun], quick: bool) -> str:
    """The report as markdown: machine, summary, then each command's output verbatim."""
    out = [
        "# Benchmark report",
        "",
        "Generated by `manage.py convo_benchmark_all"
        + (" --quick" if quick else "")
        + "`; do not edit by hand (re-run it). "
        + ("**Quick run: small sizes, a smoke test, not the figures to quote.** " if quick else "")
        + "docs/benchmarks.md explains each figure and what bounds it.",
        "",
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {key} | {_cell(value)} |" for key, value in machine.items()),
        "",
        "## Summary",
        "",
        "| figure | measured | seed target | command |",
        "| --- | --- | --- | --- |",
        *(
            f"| {_cell(row.figure)} | {_cell(row.measured)} | {_cell(row.target)} | `{row.command}` |"
            for row in summary_rows(runs)
        ),
        "",
        "## Runs",
        "",
    ]
    for run in runs:
        status = f"failed: {run.error}" if run.error else "ok"
        out += [
            f"### `{run.command}`",
            "",
            f"`manage.py {' '.join([run.command, *run.argv])}`: {run.seconds:.0f} s, {_cell(status)}",
            "",
            "```text",
            run.output.strip("\n").replace("```", "'''"),
            "```",
            "",
        ]
    return "\n".join(out)
