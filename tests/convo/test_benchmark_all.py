"""convo_benchmark_all: one real tiny run end to end (clustering latency with tiny sizes, and a
benchmark that fails), and the summary built from recorded outputs of the benchmarks too long to
run in a test (ingest, embeddings, knowledge)."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from convo.benchmark_report import (
    NOT_MEASURED,
    SEED_ACK,
    SEED_BATCH,
    SEED_CACHE,
    SEED_LIST,
    SEED_SEARCH,
    BenchmarkRun,
    report_render,
    summary_rows,
    tables_parse,
)
from convo.management.commands.convo_benchmark_all import benchmark_commands_find

TINY_CLUSTERING = "convo_benchmark_clustering=--skip-quality --sizes 20 --list-sizes 20 --messages 5 --requests 5"


def _latency(p50: float, p95: float, count: int = 100) -> dict[str, float]:
    return {"count": count, "p50": p50, "p95": p95, "p99": p95 + 1, "mean": p50, "max": p95 + 2}


INGEST = {
    "rows": [
        {"name": "conversation_create, 1 conv + 3 msgs", "latency_ms": _latency(3.1, 4.95), "rate": 291.0},
        {"name": "message_ingest, (user, session) of 100", "latency_ms": _latency(1.7, 2.25), "rate": 534.0},
        {
            "name": "HTTP POST /messages, (user, session) of 100 per client, 8 clients",
            "latency_ms": _latency(30.4, 52.76),
            "rate": 235.0,
        },
        {"name": "storage: conversation_create_batch 100 conv (300 msgs)", "latency_ms": _latency(36.9, 39.78)},
        {"name": "storage: conversation_create_batch 1000 conv (3000 msgs)", "latency_ms": _latency(312.0, 380.0)},
        {"name": "bulk: POST messages/batch x1000, 4 clients", "latency_ms": _latency(280.0, 626.0), "rate": 11079.4},
    ]
}
EMBEDDINGS = {
    "figures": [
        {"name": "batch 10: pipeline (claim, cache, model, store)", "value": "83 texts/s", "data": {"rate": 83.2}},
        {"name": "ack -> searchable at 50 msg/s, polled every 25 ms", "latency_ms": _latency(190.0, 380.0, 3000)},
        {"name": "cache hit rate, 600 Banking77 texts", "value": "0.09% (0 hot + 12 durable hits of 600 lookups)"},
        {"name": "message_neighbours, 100k, all rows (100,000 rows)", "latency_ms": _latency(9.8, 11.04, 500)},
        {"name": "HTTP POST /api/v1/search, 13,083 pipeline rows, all rows", "latency_ms": _latency(20.9, 24.98)},
    ]
}
KNOWLEDGE_OUTPUT = """answer lookup on Banking77, model hashing:v1; thresholds: answer >= 0.8 with agreement >= 0.6
figure                             |  value | aim
-----------------------------------+--------+------
questions asked                    |    500 |
answered, right intent             |  71.2% | >= 85%
lookup p50 / p95 / p99 (ms)        | 3.1 / 5.4 / 7.0 |
load average at the end: 1.00 / 1.00 / 1.00
"""


def _run(command: str, *, output: str = "", figures: dict[str, object] | None = None) -> BenchmarkRun:
    return BenchmarkRun(command=command, argv=("--quick",), output=output, figures=figures, seconds=1.0)


def test_the_benchmarks_are_found_by_name() -> None:
    found = benchmark_commands_find()
    assert {
        "convo_benchmark_ingest",
        "convo_benchmark_embeddings",
        "convo_benchmark_clustering",
        "convo_benchmark_knowledge",
    } <= set(found)
    assert "convo_benchmark_all" not in found


def test_tables_are_parsed_with_their_headers_and_empty_trailing_cells() -> None:
    text = "progress line\n\na | b  | c\n--+----+--\n1 | x  |\n2 |    | z\n\nfig | value\n----+------\nq   |   5\n"
    assert tables_parse(text) == [
        [{"a": "1", "b": "x", "c": ""}, {"a": "2", "b": "", "c": "z"}],
        [{"fig": "q", "value": "5"}],
    ]


def test_the_summary_pairs_the_recorded_figures_with_the_seed_targets() -> None:
    rows = summary_rows(
        [
            _run("convo_benchmark_ingest", figures=INGEST),
            _run("convo_benchmark_embeddings", figures=EMBEDDINGS),
            _run("convo_benchmark_knowledge", output=KNOWLEDGE_OUTPUT),
        ]
    )
    by_figure = {row.figure: (row.measured, row.target) for row in rows}
    assert by_figure["ingest ack, `message_ingest` in-process"] == ("p95 2.25 ms (p50 1.70, n=100)", SEED_ACK)
    assert by_figure["ingest ack over HTTP (POST /messages, (user, session) of 100 per client, 8 clients)"][0] == (
        "p95 52.76 ms (p50 30.40, n=100)"
    )
    assert by_figure["batch insert, 100 conversations (storage)"] == ("p95 39.78 ms (p50 36.90, n=100)", SEED_BATCH)
    assert by_figure["bulk ingest throughput, one node"][0].startswith("11,079 msg/s")
    assert by_figure["embedding throughput, one worker process (batch 10)"][0] == "83 texts/s"
    assert by_figure["acknowledgement to searchable"][0] == "p95 0.38 s (p50 0.19 s, n=3000)"
    assert by_figure["embedding cache hit rate (Banking77)"] == ("0.09%", SEED_CACHE)
    assert by_figure["search, 100k, all rows (100,000 rows)"] == ("p95 11.04 ms (p50 9.80, n=500)", SEED_SEARCH)
    assert by_figure["search over HTTP, 13,083 pipeline rows, all rows"][0] == "p95 24.98 ms (p50 20.90, n=100)"
    assert by_figure["knowledge answer lookup"][0] == "p95 5.4 ms (p50 3.1)"
    assert by_figure["questions answered with the right intent (Banking77)"][0] == "71.2%"


def test_a_run_without_figures_reads_not_measured() -> None:
    rows = summary_rows([_run("convo_benchmark_ingest", output="Traceback …")])
    assert rows and all(row.measured == NOT_MEASURED for row in rows)


def test_the_report_quotes_each_output_verbatim() -> None:
    text = report_render(
        machine={"cpu": "a CPU", "postgresql": "16.2"},
        runs=[_run("convo_benchmark_knowledge", output=KNOWLEDGE_OUTPUT)],
        quick=True,
    )
    assert "| cpu | a CPU |" in text
    assert "```text\n" + KNOWLEDGE_OUTPUT.strip("\n") + "\n```" in text
    assert "Quick run" in text


@pytest.mark.django_db(transaction=True)
def test_a_tiny_real_run_writes_the_report_and_survives_a_failing_benchmark(tmp_path: Path) -> None:
    output = tmp_path / "report.md"
    call_command(
        "convo_benchmark_all",
        "--quick",
        "--only",
        "convo_benchmark_clustering,convo_benchmark_knowledge",
        "--extra",
        TINY_CLUSTERING,
        "--extra",
        f"convo_benchmark_knowledge=--data-dir {tmp_path / 'nowhere'}",
        "--output",
        str(output),
    )
    report = output.read_text()
    assert "| postgresql | 16." in report
    assert "| cores |" in report
    list_row = next(line for line in report.splitlines() if line.startswith("| `GET /api/v1/clusters` first page"))
    assert "| p95 " in list_row and SEED_LIST in list_row
    assert "GET /api/v1/clusters, APIClient in-process, cache off" in report  # the table, verbatim
    assert "convo_benchmark_clustering --quick --skip-quality --sizes 20" in report
    assert "failed: CommandError:" in report  # knowledge without its data: reported, not fatal


def test_bad_arguments_name_the_option() -> None:
    with pytest.raises(CommandError, match="--only: no such benchmark convo_benchmark_nope"):
        call_command("convo_benchmark_all", "--only", "convo_benchmark_nope")
    with pytest.raises(CommandError, match="--extra: expected NAME=ARGS"):
        call_command("convo_benchmark_all", "--only", "convo_benchmark_clustering", "--extra=--quick")
