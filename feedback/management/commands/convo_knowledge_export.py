"""Export a tenant's knowledge entries as CSV or JSON, in the form the import reads back
(docs/knowledge.md, "Import and export").

Exit codes: 0 exported; 2 the tenant is unknown or the output cannot be written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from conversations.models import Tenant
from feedback.knowledge_io import FORMATS, knowledge_export_rows, knowledge_export_stream, knowledge_import_format

REFUSED = 2


class Command(BaseCommand):
    help = "Export one tenant's knowledge entries (id order) as CSV or JSON. See docs/knowledge.md."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="The tenant's slug.")
        parser.add_argument("--format", choices=FORMATS, help="Default: from --output's extension, else csv.")
        parser.add_argument("--active-only", action="store_true", help="Leave inactive entries out.")
        parser.add_argument("--output", help="The file to write (default: standard output).")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"No tenant with slug {options['tenant']!r}.", returncode=REFUSED)
        output = Path(options["output"]) if options["output"] else None
        file_format = options["format"] or (knowledge_import_format(name=output.name) if output else None) or "csv"
        count = 0

        def counted() -> Iterator[dict[str, Any]]:
            nonlocal count
            for row in knowledge_export_rows(tenant=tenant, active_only=options["active_only"]):
                count += 1
                yield row

        chunks = knowledge_export_stream(rows=counted(), file_format=file_format)
        if output is None:
            for chunk in chunks:
                self.stdout.write(chunk.decode(), ending="")
        else:
            self.file_write(output, chunks)
        self.stderr.write(f"exported {count} entries of {tenant.slug} as {file_format}")

    def file_write(self, output: Path, chunks: Iterator[bytes]) -> None:
        """Written beside the target and renamed over it at the end: a failed export never leaves
        a truncated file where a complete one is expected."""
        partial = output.with_name(f".{output.name}.partial")
        try:
            with partial.open("wb") as sink:
                for chunk in chunks:
                    sink.write(chunk)
            os.replace(partial, output)
        except OSError as exc:
            raise CommandError(f"Cannot write {output}: {exc.strerror}.", returncode=REFUSED) from None
        finally:
            partial.unlink(missing_ok=True)
