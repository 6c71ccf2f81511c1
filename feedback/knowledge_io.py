"""Import and export of a tenant's knowledge base, as CSV or JSON (docs/knowledge.md, "Import and export").

An import is all or nothing. Every row is read and checked first (its fields, its ``id`` and
``key`` against the tenant's entries, duplicates inside the file), and only a file without a bad
row is written, in one transaction, through the same services as every other change
(``knowledge_entry_create`` / ``knowledge_entry_update``), so each write keeps its version
history. A half-imported file would leave an operator guessing which rows to fix and send again;
here they fix the rows the report names and send the same file again.

Rows are matched to entries by ``id``, then ``key``; a row matching neither creates an entry
(source ``import``). An unchanged row writes nothing, so importing the same file twice changes
nothing. An export writes the columns an import reads, so export then import reproduces the
entries.

Row numbers are 1-based and count data rows: in a CSV the header is not counted, so row 1 is the
record after the header (a spreadsheet's row 2).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from uuid import UUID

import orjson
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q

from conversations.models import Tenant
from convo.errors import ServiceError
from feedback.knowledge import EntryFields, knowledge_entry_create, knowledge_entry_update, knowledge_fields_clean
from feedback.models import KnowledgeEntry, KnowledgeSource

if TYPE_CHECKING:
    from clustering.services.moderation import Actor

FORMATS = ("csv", "json")
COLUMNS = ("id", "key", "question", "answer", "tags", "active")
# One CSV cell holds the tags: "|" never needs quoting, where "," would in a comma-separated file.
TAG_SEPARATOR = "|"
IMPORT_CHANGE = "imported"
_REQUIRED = ("question", "answer")
_KEY_MAX_CHARS = 200  # KnowledgeEntry.key's column
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


class ImportRefused(ServiceError):
    """The whole file (or body) is unusable: malformed, of no known format, or too many rows."""

    code = "invalid_file"


class ImportTooLarge(ServiceError):
    code = "payload_too_large"
    http_status = 413


class RowStatus(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    ERROR = "error"


@dataclass(frozen=True)
class ImportRow:
    """One data row as read from the file: its number, its values (JSON types: ``tags`` a list,
    ``active`` a bool) and what was already wrong with it when it was read."""

    number: int
    values: dict[str, Any]
    errors: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class RowOutcome:
    row: int
    status: RowStatus
    entry_id: UUID | None = None
    errors: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ImportReport:
    """What an import did, or (``applied`` false: a dry run, or a bad row) what it would do."""

    dry_run: bool
    applied: bool
    rows: list[RowOutcome]

    @property
    def ok(self) -> bool:
        return not any(outcome.status == RowStatus.ERROR for outcome in self.rows)

    def counts(self) -> dict[str, int]:
        counts = {status.value: 0 for status in RowStatus}
        for outcome in self.rows:
            counts[outcome.status.value] += 1
        counts["errors"] = counts.pop(RowStatus.ERROR.value)
        return counts

    def as_dict(self) -> dict[str, Any]:
        rows = [
            {"row": o.row, "status": o.status.value, "entry_id": o.entry_id and str(o.entry_id), "errors": o.errors}
            for o in self.rows
        ]
        return {"dry_run": self.dry_run, "applied": self.applied, "counts": self.counts(), "rows": rows}


# --- reading -------------------------------------------------------------------------------------


def knowledge_import_format(*, name: str = "", content_type: str = "") -> str | None:
    """The format a file name (its extension) or a content type says, or None when neither does."""
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if suffix in FORMATS:
        return suffix
    media = content_type.split(";", 1)[0].strip().lower()
    return {"text/csv": "csv", "application/csv": "csv", "application/json": "json"}.get(media)


def knowledge_import_rows(*, content: bytes, file_format: str, field_name: str = "file") -> list[ImportRow]:
    """The rows of an import file, or ``ImportTooLarge`` / ``ImportRefused`` naming ``field_name``
    when the file as a whole cannot be used (row problems are the rows' own, checked later)."""
    limit = int(settings.KNOWLEDGE_IMPORT_MAX_BYTES)
    if len(content) > limit:
        raise ImportTooLarge(
            "The import file is too large.",
            fields={field_name: [f"Ensure the file has at most {limit} bytes (got {len(content)})."]},
        )
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _refused(field_name, f"The file is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    if file_format == "csv":
        return _csv_rows(text, field_name=field_name)
    if file_format != "json":
        raise _refused(field_name, f"Unknown format {file_format!r}: expected one of {', '.join(FORMATS)}.")
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise _refused(field_name, f"The file is not valid JSON: {exc}") from None
    return knowledge_import_entries(data=data, field_name=field_name)


def knowledge_import_entries(*, data: Any, field_name: str = "entries") -> list[ImportRow]:
    """The rows of parsed JSON: ``{"entries": [...]}`` or a bare list (the API's JSON body takes
    this path directly; its bytes were bounded by the body parser)."""
    if isinstance(data, dict):
        extra = sorted(set(data) - {"entries"})
        if extra or not isinstance(data.get("entries"), list):
            detail = f"Unknown field {extra[0]!r}; expected" if extra else "Expected"
            raise _refused(field_name, f'{detail} {{"entries": [...]}} or a list of entries.')
        data = data["entries"]
    if not isinstance(data, list):
        raise _refused(field_name, 'Expected {"entries": [...]} or a list of entries.')
    _rows_limit(len(data), field_name=field_name)
    return [
        ImportRow(number, item) if isinstance(item, dict) else ImportRow(number, {}, {"row": ["Expected an object."]})
        for number, item in enumerate(data, start=1)
    ]


def _csv_rows(text: str, *, field_name: str) -> list[ImportRow]:
    # strict: an unterminated quote is an error, not the rest of the file swallowed into one cell.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise _refused(
                field_name, f"The file is empty; a CSV import starts with a header row ({','.join(COLUMNS)})."
            )
        columns = [name.strip().lower() for name in header]
        _header_check(columns, field_name=field_name)
        rows: list[ImportRow] = []
        for number, cells in enumerate(reader, start=1):
            if not any(cell.strip() for cell in cells):
                continue  # a blank line (spreadsheets leave some at the end) keeps its number
            _rows_limit(len(rows) + 1, field_name=field_name)
            rows.append(_csv_row(number, columns, cells))
    except csv.Error as exc:
        raise _refused(field_name, f"The CSV is malformed at line {reader.line_num}: {exc}.") from None
    return rows


def _header_check(columns: list[str], *, field_name: str) -> None:
    unknown = [name for name in columns if name not in COLUMNS]
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    missing = [name for name in _REQUIRED if name not in columns]
    problems = [f"Unknown column {name!r}." for name in unknown]
    problems += [f"Column {name!r} appears more than once." for name in repeated]
    problems += [f"The header has no {name!r} column." for name in missing]
    if problems:
        raise ImportRefused(
            "The CSV header is not valid.", fields={field_name: [*problems, f"Columns: {', '.join(COLUMNS)}."]}
        )


def _csv_row(number: int, columns: list[str], cells: list[str]) -> ImportRow:
    errors: dict[str, list[str]] = {}
    if len(cells) > len(columns):
        errors["row"] = [f"The row has {len(cells)} cells; the header has {len(columns)}."]
    cell = dict(zip(columns, map(_formula_unescape, cells), strict=False))
    values: dict[str, Any] = {name: cell.get(name, "") for name in ("key", "question", "answer")}
    values["id"] = cell.get("id", "").strip() or None
    values["tags"] = [tag for tag in cell.get("tags", "").split(TAG_SEPARATOR) if tag.strip()]
    active = cell.get("active", "").strip().lower()
    if active and active not in _TRUE | _FALSE:
        errors["active"] = ["Expected true/false, 1/0 or yes/no."]
    values["active"] = active not in _FALSE
    return ImportRow(number, values, errors)


def _rows_limit(count: int, *, field_name: str) -> None:
    limit = int(settings.KNOWLEDGE_IMPORT_MAX_ROWS)
    if count > limit:
        raise ImportRefused(
            "The import has too many rows.", fields={field_name: [f"Ensure there are at most {limit} rows."]}
        )


def _refused(field_name: str, message: str) -> ImportRefused:
    return ImportRefused(message, fields={field_name: [message]})


# --- checking and writing ------------------------------------------------------------------------


@dataclass(frozen=True)
class _RowInput:
    number: int
    entry_id: UUID | None
    key: str
    fields: EntryFields | None
    active: bool
    errors: dict[str, list[str]]


@dataclass(frozen=True)
class _Plan:
    index: int
    number: int
    fields: EntryFields
    key: str
    active: bool
    entry: KnowledgeEntry | None


def knowledge_import(
    *, tenant: Tenant, rows: Sequence[ImportRow], actor: Actor, dry_run: bool = False, ignore_ids: bool = False
) -> ImportReport:
    """Check every row, then write them all in one transaction, or nothing: nothing when any row is
    bad (the report names every bad row and field) or on a dry run (the report says what would
    happen). The matched entries are locked while the import runs, so a concurrent edit waits
    instead of being overwritten by a decision taken on what it changed.

    ``ignore_ids`` drops the rows' ids (they match by key, else create): how an export is copied
    into another tenant, or into an emptied one. Without it an id that is not one of the tenant's
    entries is a row error, so a mistyped id never quietly creates a second entry."""
    if ignore_ids:
        rows = [ImportRow(row.number, {k: v for k, v in row.values.items() if k != "id"}, row.errors) for row in rows]
    outcomes: list[RowOutcome] = []
    current: _Plan | None = None
    try:
        with transaction.atomic():
            outcomes, plans = _rows_plan(tenant=tenant, rows=rows, lock=not dry_run)
            if dry_run or any(outcome.status == RowStatus.ERROR for outcome in outcomes):
                return ImportReport(dry_run=dry_run, applied=False, rows=outcomes)
            for current in plans:
                outcomes[current.index] = _plan_apply(current, tenant=tenant, actor=actor)
    except (ServiceError, IntegrityError) as exc:
        # Lost a race (another request took a new row's key since it was checked): all rolled back.
        if current is None:
            raise
        fields = exc.fields if isinstance(exc, ServiceError) and exc.fields else None
        errors = fields or {"key": ["Another change took this key while the import ran; nothing was imported."]}
        outcomes[current.index] = RowOutcome(current.number, RowStatus.ERROR, errors=errors)
        return ImportReport(dry_run=False, applied=False, rows=outcomes)
    return ImportReport(dry_run=False, applied=True, rows=outcomes)


def _rows_plan(*, tenant: Tenant, rows: Sequence[ImportRow], lock: bool) -> tuple[list[RowOutcome], list[_Plan]]:
    inputs = [_row_input(row) for row in rows]
    ids = {item.entry_id for item in inputs if item.entry_id is not None}
    keys = {item.key for item in inputs if item.key}
    entries = KnowledgeEntry.objects.filter(tenant=tenant).filter(Q(pk__in=ids) | Q(key__in=keys)).order_by("pk")
    if lock:
        entries = entries.select_for_update()
    found = list(entries) if ids or keys else []
    by_id = {entry.pk: entry for entry in found}
    by_key = {entry.key: entry for entry in found if entry.key}
    seen: dict[tuple[str, Any], int] = {}
    outcomes: list[RowOutcome] = []
    plans: list[_Plan] = []
    for index, item in enumerate(inputs):
        errors = dict(item.errors)
        entry = _row_match(item, by_id=by_id, by_key=by_key, errors=errors)
        _row_duplicates(item, entry, seen=seen, errors=errors)
        entry_id = entry.pk if entry else None
        if errors or item.fields is None:
            outcomes.append(RowOutcome(item.number, RowStatus.ERROR, entry_id, errors))
            continue
        outcomes.append(RowOutcome(item.number, _row_status(entry, item.fields, item.active), entry_id))
        plans.append(_Plan(index, item.number, item.fields, item.key, item.active, entry))
    return outcomes, plans


def _row_input(row: ImportRow) -> _RowInput:
    """A row's values checked for type and content (no database): the entry fields as the
    services clean them, or the errors, each under its field's name."""
    values, errors = row.values, {name: list(messages) for name, messages in row.errors.items()}
    if "row" in errors and not values:  # not an object: nothing more to say about its fields
        return _RowInput(row.number, None, "", None, True, errors)
    for name in sorted(set(values) - set(COLUMNS)):
        errors[name] = ["Unknown field."]
    entry_id = _id_read(values.get("id"), errors)
    key = _text_read(values, "key", errors, required=False).strip()
    if len(key) > _KEY_MAX_CHARS:
        errors["key"] = [f"Ensure this field has at most {_KEY_MAX_CHARS} characters."]
    question = _text_read(values, "question", errors, required=True)
    answer = _text_read(values, "answer", errors, required=True)
    tags = values.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        errors["tags"], tags = ["Expected a list of strings."], []
    elif any("\x00" in tag for tag in tags):
        errors["tags"] = ["Must not contain NUL characters."]
    active = values.get("active", True)
    if active is None:
        active = True
    elif not isinstance(active, bool):
        errors["active"], active = ["Expected true or false."], True
    fields: EntryFields | None = None
    try:
        fields = knowledge_fields_clean(question=question, answer=answer, tags=tags)
    except ServiceError as exc:
        for name, messages in (exc.fields or {}).items():
            errors.setdefault(name, messages)
    return _RowInput(row.number, entry_id, key, fields, active, errors)


def _id_read(value: Any, errors: dict[str, list[str]]) -> UUID | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, str):
            return UUID(value.strip())
    except ValueError:
        pass
    errors["id"] = ["Expected an entry id (a UUID)."]
    return None


def _text_read(values: dict[str, Any], name: str, errors: dict[str, list[str]], *, required: bool) -> str:
    value = values.get(name)
    if value is None:
        if required:
            errors[name] = ["This field is required."]
        return ""
    if not isinstance(value, str):
        errors[name] = ["Expected a string."]
        return ""
    if "\x00" in value:
        errors[name] = ["Must not contain NUL characters."]  # PostgreSQL text cannot store them
        return ""
    return value


def _row_match(
    item: _RowInput,
    *,
    by_id: dict[UUID, KnowledgeEntry],
    by_key: dict[str, KnowledgeEntry],
    errors: dict[str, list[str]],
) -> KnowledgeEntry | None:
    """The entry the row updates: by id (which must be one of the tenant's), else by key."""
    if item.entry_id is None:
        return by_key.get(item.key) if item.key else None
    entry = by_id.get(item.entry_id)
    if entry is None:
        # Another tenant's id answers the same as an unknown one: it must not reveal that it exists.
        errors["id"] = ["This tenant has no entry with this id."]
    elif item.key and item.key != entry.key:
        errors["key"] = [f"The entry with this id has key {entry.key!r}; an import cannot change a key."]
    return entry


def _row_duplicates(
    item: _RowInput, entry: KnowledgeEntry | None, *, seen: dict[tuple[str, Any], int], errors: dict[str, list[str]]
) -> None:
    """Two rows for one entry (the same id, or the same key) would make the outcome depend on row
    order: the later row is an error."""
    tokens: list[tuple[str, Any]] = []
    if item.entry_id is not None or entry is not None:
        tokens.append(("id", item.entry_id or (entry and entry.pk)))
    key = item.key or (entry.key if entry else "")
    if key:
        tokens.append(("key", key))
    for kind, value in tokens:
        if (kind, value) in seen:
            name = "id" if item.entry_id is not None else "key"
            errors.setdefault(name, []).append(
                f"Row {seen[(kind, value)]} already imports this entry ({kind} {value})."
            )
            return
    for token in tokens:
        seen[token] = item.number


def _row_status(entry: KnowledgeEntry | None, fields: EntryFields, active: bool) -> RowStatus:
    if entry is None:
        return RowStatus.CREATED
    same = (fields.question, fields.answer, list(fields.tags), active) == (
        entry.question,
        entry.answer,
        list(entry.tags),
        entry.active,
    )
    return RowStatus.UNCHANGED if same else RowStatus.UPDATED


def _plan_apply(plan: _Plan, *, tenant: Tenant, actor: Actor) -> RowOutcome:
    if plan.entry is None:
        created = knowledge_entry_create(
            tenant=tenant,
            fields=plan.fields,
            actor=actor,
            source=KnowledgeSource.IMPORT,
            key=plan.key,
            active=plan.active,
            change=IMPORT_CHANGE,
        )
        return RowOutcome(plan.number, RowStatus.CREATED, created.pk)
    if _row_status(plan.entry, plan.fields, plan.active) == RowStatus.UNCHANGED:
        return RowOutcome(plan.number, RowStatus.UNCHANGED, plan.entry.pk)
    updated = knowledge_entry_update(
        entry=plan.entry,
        actor=actor,
        question=plan.fields.question,
        answer=plan.fields.answer,
        tags=list(plan.fields.tags),
        active=plan.active,
        change=IMPORT_CHANGE,
    )
    status = RowStatus.UPDATED if updated.version != plan.entry.version else RowStatus.UNCHANGED
    return RowOutcome(plan.number, status, updated.pk)


# --- export --------------------------------------------------------------------------------------


def knowledge_export_rows(*, tenant: Tenant, active_only: bool = False) -> Iterator[dict[str, Any]]:
    """The tenant's entries in id order (creation order: ids are UUIDv7) as import rows, read in
    chunks so an export of any size holds one chunk in memory."""
    entries = KnowledgeEntry.objects.filter(tenant=tenant)
    if active_only:
        entries = entries.filter(active=True)
    for entry_id, key, question, answer, tags, active in (
        entries.order_by("pk").values_list("pk", "key", "question", "answer", "tags", "active").iterator(2000)
    ):
        yield {"id": str(entry_id), "key": key, "question": question, "answer": answer, "tags": tags, "active": active}


def knowledge_export_stream(*, rows: Iterable[dict[str, Any]], file_format: str) -> Iterator[bytes]:
    """The rows as a CSV file (UTF-8, header first, tags joined by ``|``) or as JSON
    (``{"entries": [...]}``, which an import reads back), piece by piece."""
    if file_format == "csv":
        yield from _csv_stream(rows)
        return
    yield b'{"entries":['
    for number, row in enumerate(rows):
        yield (b"," if number else b"") + orjson.dumps(row)
    yield b"]}\n"


class _Line:
    """A file-like sink for ``csv.writer`` that hands each written line back instead of storing it."""

    def write(self, value: str) -> str:
        return value


def _csv_stream(rows: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    writer = csv.writer(_Line())
    yield str(writer.writerow(COLUMNS)).encode()
    for row in rows:
        cells = [row["id"], row["key"], row["question"], row["answer"], TAG_SEPARATOR.join(row["tags"])]
        yield str(writer.writerow([*map(_formula_escape, cells), "true" if row["active"] else "false"])).encode()


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection, OWASP).
_FORMULA_START = re.compile(r"'*[=+\-@\t\r]")


def _formula_escape(cell: str) -> str:
    """``cell`` made inert for a spreadsheet by a leading apostrophe, which spreadsheets hide.
    Cells that are apostrophes then a formula character get one too, so that
    ``_formula_unescape`` gives every exported text back exactly."""
    return "'" + cell if _FORMULA_START.match(cell) else cell


def _formula_unescape(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and _FORMULA_START.match(cell[1:]) else cell
