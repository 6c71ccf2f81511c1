"""Import a tenant's knowledge entries from a CSV or JSON file (docs/knowledge.md, "Import and export").

All or nothing: when any row is bad, nothing is written and every bad row is listed.

Exit codes: 0 imported (or a clean dry run); 1 some rows are bad (nothing written); 2 the file
was refused whole (unreadable, malformed, too large, too many rows) or the tenant is unknown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from clustering.services.moderation import Actor
from conversations.models import Tenant
from convo.errors import ServiceError
from feedback.knowledge_io import (
    FORMATS,
    ImportReport,
    RowStatus,
    knowledge_import,
    knowledge_import_format,
    knowledge_import_rows,
)

ROWS_BAD = 1
REFUSED = 2


class Command(BaseCommand):
    help = (
        "Import knowledge entries for one tenant from a CSV or JSON file: rows match entries by id, then "
        "key, else create one. Nothing is written when any row is bad. See docs/knowledge.md."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="The CSV or JSON file to import.")
        parser.add_argument("--tenant", required=True, help="The tenant's slug.")
        parser.add_argument("--format", choices=FORMATS, help="Default: from the file's extension.")
        parser.add_argument("--dry-run", action="store_true", help="Check every row and report; write nothing.")
        parser.add_argument(
            "--ignore-ids", action="store_true", help="Match rows by key only (to copy another tenant's export)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"No tenant with slug {options['tenant']!r}.", returncode=REFUSED)
        path = Path(options["file"])
        file_format = options["format"] or knowledge_import_format(name=path.name)
        if file_format is None:
            raise CommandError(f"Cannot tell the format of {path.name}: pass --format csv|json.", returncode=REFUSED)
        content = self.file_read(path)
        try:
            rows = knowledge_import_rows(content=content, file_format=file_format)
            report = knowledge_import(
                tenant=tenant,
                rows=rows,
                actor=Actor(label="command:convo_knowledge_import"),
                dry_run=options["dry_run"],
                ignore_ids=options["ignore_ids"],
            )
        except ServiceError as exc:
            problems = [message for messages in (exc.fields or {}).values() for message in messages]
            raise CommandError(" ".join(problems) or exc.message, returncode=REFUSED) from None
        self.report_write(report, verbosity=options["verbosity"])
        if not report.ok:
            raise CommandError(
                f"{report.counts()['errors']} rows have errors; nothing was imported.", returncode=ROWS_BAD
            )

    def file_read(self, path: Path) -> bytes:
        """The file's bytes; one past the size limit is refused before it is read."""
        limit = int(settings.KNOWLEDGE_IMPORT_MAX_BYTES)
        try:
            size = path.stat().st_size
            if size <= limit:
                return path.read_bytes()
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc.strerror}.", returncode=REFUSED) from None
        raise CommandError(
            f"{path} has {size} bytes; the limit is {limit} (KNOWLEDGE_IMPORT_MAX_BYTES).", returncode=REFUSED
        )

    def report_write(self, report: ImportReport, *, verbosity: int) -> None:
        counts = report.counts()
        summary = ", ".join(f"{name} {count}" for name, count in counts.items())
        if report.dry_run:
            summary = f"dry run (nothing written): {summary}"
        elif not report.applied:
            summary = f"nothing written: {summary}"
        self.stdout.write(summary)
        for outcome in report.rows:
            if outcome.status == RowStatus.ERROR:
                for name, messages in outcome.errors.items():
                    self.stderr.write(f"row {outcome.row}: {name}: {' '.join(messages)}")
            elif verbosity >= 2:
                self.stdout.write(f"row {outcome.row}: {outcome.status.value} {outcome.entry_id or ''}".rstrip())
