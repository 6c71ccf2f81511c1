"""Run every benchmark of the project and write one markdown report (docs/benchmarks.md says how
to read it).

The benchmarks are found, not listed: every ``convo_benchmark_*`` command of the installed apps
(this one aside), each run through ``call_command`` with its output captured, ``--quick`` passed
on when asked for and the command has it, and ``--json`` where the command writes its figures as
JSON (the summary prefers those to the printed tables). A failing benchmark is reported and the
others still run. The report goes to docs/benchmarks-report.md by default: docs/benchmarks.md is
written by hand (the analysis of the figures) and is never overwritten.
"""

from __future__ import annotations

import io
import json
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any

from django.core.management import call_command, get_commands, load_command_class
from django.core.management.base import BaseCommand, CommandError, CommandParser

from convo.benchmark_report import BenchmarkRun, machine_describe, report_render
from convo.env import BASE_DIR

PREFIX = "convo_benchmark_"
THIS = "convo_benchmark_all"


class Command(BaseCommand):
    help = "Run every convo_benchmark_* command and write one report (machine, tables, figures beside the seeds)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--quick", action="store_true", help="Pass --quick to each benchmark that has it.")
        parser.add_argument(
            "--output",
            default=str(BASE_DIR / "docs" / "benchmarks-report.md"),
            help="Where the report goes (docs/benchmarks-report.md).",
        )
        parser.add_argument("--only", help="Comma-separated benchmarks to run (default: all found).")
        parser.add_argument(
            "--extra",
            action="append",
            default=[],
            metavar="NAME=ARGS",
            help='More arguments for one benchmark, e.g. "convo_benchmark_clustering=--skip-quality" (repeatable).',
        )

    def handle(self, *args: Any, **options: Any) -> None:
        found = benchmark_commands_find()
        names = found
        if options["only"]:
            names = [name.strip() for name in options["only"].split(",") if name.strip()]
            unknown = sorted(set(names) - set(found))
            if unknown:
                raise CommandError(f"--only: no such benchmark {', '.join(unknown)} (found: {', '.join(found)})")
        extra = _extra_args(options["extra"], known=found)
        machine = machine_describe()
        runs: list[BenchmarkRun] = []
        for name in names:
            self.stdout.write(f"== {name}")
            run = benchmark_command_run(name=name, quick=bool(options["quick"]), extra=extra.get(name, []))
            self.stdout.write(f"   {run.seconds:.0f} s, {'failed: ' + run.error if run.error else 'ok'}")
            runs.append(run)
        output = Path(options["output"])
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report_render(machine=machine, runs=runs, quick=bool(options["quick"])))
        self.stdout.write(f"report written to {output}")


def benchmark_commands_find() -> list[str]:
    """Every ``convo_benchmark_*`` command of the installed apps but this one, sorted."""
    return sorted(name for name in get_commands() if name.startswith(PREFIX) and name != THIS)


def benchmark_command_run(*, name: str, quick: bool, extra: list[str]) -> BenchmarkRun:
    """Run one benchmark with its output captured; its exceptions become the run's error."""
    command = load_command_class(get_commands()[name], name)
    flags = {flag for action in command.create_parser("manage.py", name)._actions for flag in action.option_strings}
    argv = ["--quick"] if quick and "--quick" in flags else []
    argv += extra
    buffer = io.StringIO()
    error = ""
    figures: dict[str, Any] | None = None
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="convo-bench-") as scratch:
        json_path = Path(scratch) / f"{name}.json"
        json_argv = ["--json", str(json_path)] if "--json" in flags else []
        try:
            call_command(command, *argv, *json_argv, stdout=buffer, stderr=buffer)
        except Exception as exc:  # one failing benchmark must not lose the others
            error = f"{type(exc).__name__}: {exc}"
        if json_path.exists():
            figures = json.loads(json_path.read_text())
    return BenchmarkRun(
        command=name,
        argv=tuple(argv),
        output=buffer.getvalue(),
        figures=figures,
        seconds=time.perf_counter() - began,
        error=error,
    )


def _extra_args(values: list[str], *, known: list[str]) -> dict[str, list[str]]:
    extra: dict[str, list[str]] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or name not in known:
            raise CommandError(f"--extra: expected NAME=ARGS with NAME one of {', '.join(known)}, got {value!r}")
        extra.setdefault(name, []).extend(shlex.split(rest))
    return extra
