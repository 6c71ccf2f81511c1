"""Knowledge import and export (feedback/knowledge_io.py) and their commands: matching by id then
key, per-row errors with nothing written, duplicates, tenancy, limits at the limit and one past it,
dry runs, and the export -> import round trip."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError

from clustering.services.moderation import Actor
from conversations.models import Tenant
from feedback import knowledge_io
from feedback.knowledge import knowledge_entry_create, knowledge_fields_clean
from feedback.knowledge_io import (
    ImportRefused,
    ImportReport,
    ImportTooLarge,
    knowledge_export_rows,
    knowledge_export_stream,
    knowledge_import,
    knowledge_import_rows,
)
from feedback.models import KnowledgeEntry, KnowledgeEntryVersion, KnowledgeSource

pytestmark = pytest.mark.django_db

ACTOR = Actor(label="test:importer")
HEADER = "id,key,question,answer,tags,active\n"


def entry_of(tenant: Tenant, question: str, answer: str = "An answer.", **extra: Any) -> KnowledgeEntry:
    fields = knowledge_fields_clean(question=question, answer=answer, tags=extra.pop("tags", ()))
    return knowledge_entry_create(tenant=tenant, fields=fields, actor=ACTOR, **extra)


def run(
    tenant: Tenant, content: str | bytes, file_format: str = "csv", *, dry_run: bool = False, ignore_ids: bool = False
) -> ImportReport:
    data = content.encode() if isinstance(content, str) else content
    rows = knowledge_import_rows(content=data, file_format=file_format)
    return knowledge_import(tenant=tenant, rows=rows, actor=ACTOR, dry_run=dry_run, ignore_ids=ignore_ids)


def rows_of(report: ImportReport) -> list[tuple[int, str, dict[str, list[str]]]]:
    return [(o.row, o.status.value, o.errors) for o in report.rows]


def snapshot(tenant: Tenant) -> list[tuple[str, str, str, list[str], bool]]:
    return [
        (e.key, e.question, e.answer, list(e.tags), e.active)
        for e in KnowledgeEntry.objects.filter(tenant=tenant).order_by("pk")
    ]


def export(tenant: Tenant, file_format: str, *, active_only: bool = False) -> bytes:
    rows = knowledge_export_rows(tenant=tenant, active_only=active_only)
    return b"".join(knowledge_export_stream(rows=rows, file_format=file_format))


# --- creating and updating -----------------------------------------------------------------------


def test_csv_import_creates_entries_at_version_one_with_source_import(tenant: Tenant) -> None:
    content = (
        "\ufeffkey,question,answer,tags,active\n"  # a BOM and no id column: both fine
        'hours,When do you open?,"Nine to five, weekdays.",Hours|Opening,yes\n'
        ",Do you ship abroad?,No.,,0\n"
    )
    report = run(tenant, content)

    assert report.applied and report.ok
    assert report.counts() == {"created": 2, "updated": 0, "unchanged": 0, "errors": 0}
    assert snapshot(tenant) == [
        ("hours", "When do you open?", "Nine to five, weekdays.", ["hours", "opening"], True),
        ("", "Do you ship abroad?", "No.", [], False),
    ]
    entries = list(KnowledgeEntry.objects.filter(tenant=tenant).order_by("pk"))
    assert [o.entry_id for o in report.rows] == [e.pk for e in entries]
    assert {(e.source, e.version, e.updated_by) for e in entries} == {(KnowledgeSource.IMPORT, 1, "test:importer")}
    versions = KnowledgeEntryVersion.objects.filter(entry__tenant=tenant)
    assert sorted((v.version, v.change) for v in versions) == [(1, "imported"), (1, "imported")]


@pytest.mark.parametrize("envelope", [True, False])
def test_json_import_reads_an_envelope_or_a_bare_list(tenant: Tenant, envelope: bool) -> None:
    entries = [
        {"key": "refund", "question": "Can I get a refund?", "answer": "Within 30 days.", "tags": ["Billing"]},
        {"question": "Is there an app?", "answer": "Yes.", "active": False, "id": None},
    ]
    report = run(tenant, orjson.dumps({"entries": entries} if envelope else entries), "json")

    assert rows_of(report) == [(1, "created", {}), (2, "created", {})]
    assert snapshot(tenant) == [
        ("refund", "Can I get a refund?", "Within 30 days.", ["billing"], True),
        ("", "Is there an app?", "Yes.", [], False),
    ]


def test_rows_update_by_key_and_by_id_with_a_version_named_imported(tenant: Tenant) -> None:
    by_key = entry_of(tenant, "When do you open?", key="hours")
    by_id = entry_of(tenant, "Do you ship?")
    same = entry_of(tenant, "Is there an app?", answer="Yes.")
    content = HEADER + (
        ",hours,When do you open?,From nine.,,\n"
        f"{by_id.pk},,Do you ship abroad?,An answer.,,false\n"
        f"{same.pk},,Is there an app?,Yes.,,\n"
    )
    report = run(tenant, content)

    assert rows_of(report) == [(1, "updated", {}), (2, "updated", {}), (3, "unchanged", {})]
    assert [o.entry_id for o in report.rows] == [by_key.pk, by_id.pk, same.pk]
    by_key.refresh_from_db()
    by_id.refresh_from_db()
    same.refresh_from_db()
    assert (by_key.version, by_key.answer, by_key.source) == (2, "From nine.", KnowledgeSource.MANUAL)
    assert (by_id.version, by_id.question, by_id.active) == (2, "Do you ship abroad?", False)
    assert same.version == 1
    assert by_key.versions.get(version=2).change == "imported"
    assert by_id.versions.get(version=2).change == "imported"
    assert KnowledgeEntry.objects.filter(tenant=tenant).count() == 3


def test_reimporting_the_same_file_changes_nothing(tenant: Tenant) -> None:
    content = HEADER + ",a,First question?,First answer.,x|y,\n,,Second question?,Second answer.,,false\n"
    run(tenant, content)
    first_export = export(tenant, "csv")

    again = run(tenant, first_export)

    assert again.counts() == {"created": 0, "updated": 0, "unchanged": 2, "errors": 0}
    assert KnowledgeEntry.objects.filter(tenant=tenant).count() == 2
    assert KnowledgeEntryVersion.objects.filter(entry__tenant=tenant).count() == 2
    assert set(KnowledgeEntry.objects.filter(tenant=tenant).values_list("version", flat=True)) == {1}


# --- bad rows: nothing written, every bad row named ------------------------------------------------


def test_bad_rows_write_nothing_and_are_all_reported_with_their_fields(tenant: Tenant) -> None:
    existing = entry_of(tenant, "When do you open?", key="hours")
    content = HEADER + (
        ",new,A good new question?,A good answer.,,\n"
        ",, ,An answer without a question.,,\n"
        ",hours,When do you open?,Changed answer.,,\n"
        ",,Fine question?,Fine answer.,,maybe\n"
        f"not-a-uuid,,Q?,A.,{'|'.join(f't{n}' for n in range(30))},\n"
        ",,Q?,A.,,,extra cell\n"
    )
    report = run(tenant, content)

    assert not report.applied and not report.ok
    assert report.counts() == {"created": 1, "updated": 1, "unchanged": 0, "errors": 4}
    outcomes = {o.row: o for o in report.rows}
    assert outcomes[1].status == "created" and outcomes[1].entry_id is None
    assert outcomes[3].status == "updated" and outcomes[3].entry_id == existing.pk
    assert set(outcomes[2].errors) == {"question"}
    assert set(outcomes[4].errors) == {"active"}
    assert set(outcomes[5].errors) == {"id", "tags"}
    assert set(outcomes[6].errors) == {"row"}
    assert snapshot(tenant) == [("hours", "When do you open?", "An answer.", [], True)]
    assert KnowledgeEntryVersion.objects.filter(entry__tenant=tenant).count() == 1


def test_json_rows_of_the_wrong_type_are_row_errors(tenant: Tenant) -> None:
    entries = [
        "not an object",
        {"question": 3, "answer": "A."},
        {"question": "Q?", "answer": "A.", "tags": "a|b", "active": "yes", "colour": "red"},
        {"question": "Q\x00?", "answer": "A."},
        {"answer": "A."},
    ]
    report = run(tenant, orjson.dumps({"entries": entries}), "json")

    assert [sorted(o.errors) for o in report.rows] == [
        ["row"],
        ["question"],
        ["active", "colour", "tags"],
        ["question"],
        ["question"],
    ]
    assert not KnowledgeEntry.objects.filter(tenant=tenant).exists()


def test_a_key_or_id_twice_in_one_file_is_an_error_on_the_later_row(tenant: Tenant) -> None:
    existing = entry_of(tenant, "Existing?", key="old")
    content = HEADER + (
        ",dup,First?,A.,,\n"
        ",dup,Second?,A.,,\n"
        f"{existing.pk},,Existing?,B.,,\n"
        f"{existing.pk},,Existing?,C.,,\n"
        ",old,Existing?,D.,,\n"  # the same entry, by its key
    )
    report = run(tenant, content)

    assert rows_of(report)[0] == (1, "created", {})
    assert rows_of(report)[2] == (3, "updated", {})
    assert list(report.rows[1].errors) == ["key"] and "Row 1" in report.rows[1].errors["key"][0]
    assert list(report.rows[3].errors) == ["id"] and "Row 3" in report.rows[3].errors["id"][0]
    assert list(report.rows[4].errors) == ["key"] and "Row 3" in report.rows[4].errors["key"][0]
    assert KnowledgeEntry.objects.filter(tenant=tenant).count() == 1


def test_an_unknown_id_and_a_changed_key_are_row_errors(tenant: Tenant) -> None:
    keyed = entry_of(tenant, "Keyed?", key="k1")
    content = HEADER + (
        f"0190a5a0-0000-7000-8000-000000000000,,Q?,A.,,\n{keyed.pk},k2,Keyed?,A.,,\n"  # an import cannot rename a key
    )
    report = run(tenant, content)

    assert [list(o.errors) for o in report.rows] == [["id"], ["key"]]
    assert snapshot(tenant) == [("k1", "Keyed?", "An answer.", [], True)]


def test_another_tenants_entry_id_is_an_error_and_their_entry_is_untouched(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = entry_of(other_tenant, "Their question?", key="shared")
    content = HEADER + f"{theirs.pk},,Hijacked?,Hijacked.,,false\n,shared,Mine?,Mine.,,\n"

    report = run(tenant, content)

    assert report.rows[0].errors == {"id": ["This tenant has no entry with this id."]}
    assert report.rows[1].status == "created"  # a key is per tenant: theirs does not match
    theirs.refresh_from_db()
    assert (theirs.question, theirs.version, theirs.active) == ("Their question?", 1, True)
    assert not KnowledgeEntry.objects.filter(tenant=tenant).exists()


def test_a_write_that_fails_midway_rolls_back_the_rows_before_it(
    tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = knowledge_io.knowledge_entry_create
    calls: list[int] = []

    def second_loses_a_race(**kwargs: Any) -> KnowledgeEntry:
        calls.append(1)
        if len(calls) == 2:
            raise IntegrityError("duplicate key value violates unique constraint")
        return real(**kwargs)

    monkeypatch.setattr(knowledge_io, "knowledge_entry_create", second_loses_a_race)
    report = run(tenant, HEADER + ",a,One?,A.,,\n,b,Two?,B.,,\n,c,Three?,C.,,\n")

    assert not report.applied
    assert [o.status.value for o in report.rows] == ["created", "error", "created"]
    assert list(report.rows[1].errors) == ["key"]
    assert not KnowledgeEntry.objects.filter(tenant=tenant).exists()


def test_a_dry_run_reports_and_writes_nothing(tenant: Tenant) -> None:
    existing = entry_of(tenant, "When do you open?", key="hours")
    content = HEADER + ",hours,When do you open?,Changed.,,\n,,New?,New.,,\n"

    report = run(tenant, content, dry_run=True)

    assert (report.dry_run, report.applied) == (True, False)
    assert rows_of(report) == [(1, "updated", {}), (2, "created", {})]
    existing.refresh_from_db()
    assert (existing.answer, existing.version) == ("An answer.", 1)
    assert KnowledgeEntry.objects.filter(tenant=tenant).count() == 1


# --- the file as a whole ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "file_format", "says"),
    [
        (b"", "csv", "header row"),
        (b"question,answer,colour\nQ,A,red\n", "csv", "Unknown column 'colour'"),
        (b"key,answer\nk,A\n", "csv", "no 'question' column"),
        (b"question,answer,answer\nQ,A,A\n", "csv", "more than once"),
        (b'question,answer\n"Q,A\n', "csv", "malformed"),
        (b"question,answer\nQ,\xff\n", "csv", "not UTF-8"),
        (b'{"entries": [', "json", "not valid JSON"),
        (b'{"items": []}', "json", "Unknown field 'items'"),
        (b'"text"', "json", "Expected"),
    ],
)
def test_a_malformed_file_is_refused_whole_naming_file(
    tenant: Tenant, content: bytes, file_format: str, says: str
) -> None:
    with pytest.raises(ImportRefused) as refused:
        knowledge_import_rows(content=content, file_format=file_format)
    assert list(refused.value.fields or {}) == ["file"]
    assert says in " ".join((refused.value.fields or {})["file"])


@pytest.mark.parametrize("file_format", ["csv", "json"])
def test_rows_at_the_limit_are_imported_and_one_more_is_refused(
    tenant: Tenant, settings: Any, file_format: str
) -> None:
    settings.KNOWLEDGE_IMPORT_MAX_ROWS = 3

    def file_of(count: int) -> bytes:
        entries = [{"question": f"Question {n}?", "answer": "A."} for n in range(count)]
        if file_format == "json":
            return orjson.dumps({"entries": entries})
        return ("question,answer\n" + "".join(f"{e['question']},{e['answer']}\n" for e in entries)).encode()

    with pytest.raises(ImportRefused) as refused:
        knowledge_import_rows(content=file_of(4), file_format=file_format)
    assert refused.value.fields == {"file": ["Ensure there are at most 3 rows."]}
    assert run(tenant, file_of(3), file_format).counts()["created"] == 3


def test_bytes_at_the_limit_are_read_and_one_more_is_refused(tenant: Tenant, settings: Any) -> None:
    content = b"question,answer\nQ?,A.\n"
    settings.KNOWLEDGE_IMPORT_MAX_BYTES = len(content)
    assert len(knowledge_import_rows(content=content, file_format="csv")) == 1

    with pytest.raises(ImportTooLarge) as too_large:
        knowledge_import_rows(content=content + b"\n", file_format="csv")
    assert too_large.value.http_status == 413
    assert list(too_large.value.fields or {}) == ["file"]


def test_blank_csv_lines_are_skipped_but_keep_their_row_number(tenant: Tenant) -> None:
    report = run(tenant, "question,answer\nFirst?,A.\n\n,\nFourth?,\n")
    assert [(o.row, o.status.value) for o in report.rows] == [(1, "created"), (4, "error")]


# --- export and the round trip ---------------------------------------------------------------------


def make_entries(tenant: Tenant) -> None:
    entry_of(tenant, "When do you open?", 'Nine to five, "weekdays".\nClosed on Sundays.', tags=["hours", "week"])
    entry_of(tenant, "Do you ship abroad?", "No.", key="shipping", active=False)
    entry_of(tenant, "Café au lait?", "Oui — 3 €.", key="café", tags=["menu"])


def test_export_writes_the_tenants_entries_in_id_order(tenant: Tenant, other_tenant: Tenant) -> None:
    make_entries(tenant)
    entry_of(other_tenant, "Not mine?")
    ids = [str(pk) for pk in KnowledgeEntry.objects.filter(tenant=tenant).order_by("pk").values_list("pk", flat=True)]

    as_json = orjson.loads(export(tenant, "json"))
    as_csv = list(csv.DictReader(io.StringIO(export(tenant, "csv").decode(), newline="")))
    active_only = orjson.loads(export(tenant, "json", active_only=True))

    assert [row["id"] for row in as_json["entries"]] == ids
    assert [row["id"] for row in as_csv] == ids
    assert as_json["entries"][0] == {
        "id": ids[0],
        "key": "",
        "question": "When do you open?",
        "answer": 'Nine to five, "weekdays".\nClosed on Sundays.',
        "tags": ["hours", "week"],
        "active": True,
    }
    assert as_csv[1] | {"id": ""} == {
        "id": "",
        "key": "shipping",
        "question": "Do you ship abroad?",
        "answer": "No.",
        "tags": "",
        "active": "false",
    }
    assert as_csv[0]["tags"] == "hours|week"
    assert [row["key"] for row in active_only["entries"]] == ["", "café"]


@pytest.mark.parametrize("file_format", ["csv", "json"])
def test_export_then_import_into_an_empty_tenant_reproduces_the_entries(
    tenant: Tenant, other_tenant: Tenant, file_format: str
) -> None:
    make_entries(tenant)
    exported = export(tenant, file_format)

    # The ids are the source tenant's: ignored, the rows match by key or create.
    report = run(other_tenant, exported, file_format, ignore_ids=True)

    assert report.counts() == {"created": 3, "updated": 0, "unchanged": 0, "errors": 0}
    assert snapshot(other_tenant) == snapshot(tenant)
    assert set(KnowledgeEntry.objects.filter(tenant=other_tenant).values_list("source", flat=True)) == {"import"}
    # The same file back into its own tenant (ids kept) changes nothing.
    assert run(tenant, exported, file_format).counts()["unchanged"] == 3
    assert KnowledgeEntryVersion.objects.filter(entry__tenant=tenant).count() == 3


def test_an_export_with_ids_into_another_tenant_is_refused_row_by_row_without_ignore_ids(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    make_entries(tenant)
    report = run(other_tenant, export(tenant, "json"), "json")
    assert [list(o.errors) for o in report.rows] == [["id"], ["id"], ["id"]]
    assert not KnowledgeEntry.objects.filter(tenant=other_tenant).exists()


# --- the commands --------------------------------------------------------------------------------


def test_import_command_imports_and_prints_the_summary(tenant: Tenant, tmp_path: Path) -> None:
    path = tmp_path / "kb.json"
    path.write_text(json.dumps({"entries": [{"key": "a", "question": "Q?", "answer": "A."}]}))
    out, err = io.StringIO(), io.StringIO()

    call_command("convo_knowledge_import", str(path), "--tenant", tenant.slug, stdout=out, stderr=err)

    assert out.getvalue().strip() == "created 1, updated 0, unchanged 0, errors 0"
    assert KnowledgeEntry.objects.get(tenant=tenant).key == "a"


def test_import_command_dry_run_writes_nothing(tenant: Tenant, tmp_path: Path) -> None:
    path = tmp_path / "kb.txt"
    path.write_text("question,answer\nQ?,A.\n")
    out = io.StringIO()

    call_command(
        "convo_knowledge_import", str(path), "--tenant", tenant.slug, "--format", "csv", "--dry-run", stdout=out
    )

    assert out.getvalue().startswith("dry run (nothing written): created 1")
    assert not KnowledgeEntry.objects.filter(tenant=tenant).exists()


def test_import_command_lists_bad_rows_and_exits_1(tenant: Tenant, tmp_path: Path) -> None:
    path = tmp_path / "kb.csv"
    path.write_text("question,answer,active\nGood?,A.,\n,A.,\nQ?,A.,perhaps\n")
    out, err = io.StringIO(), io.StringIO()

    with pytest.raises(CommandError) as failed:
        call_command("convo_knowledge_import", str(path), "--tenant", tenant.slug, stdout=out, stderr=err)

    assert failed.value.returncode == 1
    assert "2 rows have errors" in str(failed.value)
    assert out.getvalue().startswith("nothing written: created 1, updated 0, unchanged 0, errors 2")
    assert err.getvalue().splitlines() == [
        "row 2: question: This field may not be blank.",
        "row 3: active: Expected true/false, 1/0 or yes/no.",
    ]
    assert not KnowledgeEntry.objects.filter(tenant=tenant).exists()


@pytest.mark.parametrize(
    ("name", "content", "extra", "says"),
    [
        ("kb.csv", "question,answer\nQ?,A.\n", ["--tenant", "no-such-tenant"], "No tenant"),
        ("kb.txt", "question,answer\nQ?,A.\n", [], "--format"),
        ("kb.json", "{nope", [], "not valid JSON"),
        ("kb.csv", "question,answer\n" + "Q?,A.\n" * 5, [], "at most 3 rows"),
        ("kb.csv", "question,answer\n" + "Q?," + "A" * 200 + "\n", [], "KNOWLEDGE_IMPORT_MAX_BYTES"),
    ],
)
def test_import_command_refuses_a_bad_file_with_exit_2(
    tenant: Tenant, tmp_path: Path, settings: Any, name: str, content: str, extra: list[str], says: str
) -> None:
    settings.KNOWLEDGE_IMPORT_MAX_ROWS = 3
    settings.KNOWLEDGE_IMPORT_MAX_BYTES = 200
    path = tmp_path / name
    path.write_text(content)
    args = extra or ["--tenant", tenant.slug]

    with pytest.raises(CommandError) as failed:
        call_command("convo_knowledge_import", str(path), *args, stdout=io.StringIO(), stderr=io.StringIO())

    assert failed.value.returncode == 2
    assert says in str(failed.value)


def test_export_command_writes_a_file_the_import_reads_back(tenant: Tenant, tmp_path: Path) -> None:
    make_entries(tenant)
    path = tmp_path / "kb.json"
    err = io.StringIO()

    call_command("convo_knowledge_export", "--tenant", tenant.slug, "--output", str(path), "--active-only", stderr=err)

    assert [row["question"] for row in orjson.loads(path.read_bytes())["entries"]] == [
        "When do you open?",
        "Café au lait?",
    ]
    assert "exported 2 entries" in err.getvalue()
    assert list(tmp_path.iterdir()) == [path]  # no partial file left behind
    out = io.StringIO()
    call_command("convo_knowledge_import", str(path), "--tenant", tenant.slug, stdout=out)
    assert out.getvalue().strip() == "created 0, updated 0, unchanged 2, errors 0"


def test_import_command_copies_another_tenants_export_with_ignore_ids(
    tenant: Tenant, other_tenant: Tenant, tmp_path: Path
) -> None:
    make_entries(tenant)
    path = tmp_path / "kb.csv"
    call_command("convo_knowledge_export", "--tenant", tenant.slug, "--output", str(path), stderr=io.StringIO())
    out = io.StringIO()

    with pytest.raises(CommandError):
        call_command("convo_knowledge_import", str(path), "--tenant", other_tenant.slug, stdout=out, stderr=out)
    call_command("convo_knowledge_import", str(path), "--tenant", other_tenant.slug, "--ignore-ids", stdout=out)

    assert out.getvalue().splitlines()[-1] == "created 3, updated 0, unchanged 0, errors 0"
    assert snapshot(other_tenant) == snapshot(tenant)


def test_export_command_writes_csv_to_stdout_by_default(tenant: Tenant) -> None:
    make_entries(tenant)
    out = io.StringIO()

    call_command("convo_knowledge_export", "--tenant", tenant.slug, stdout=out, stderr=io.StringIO())

    rows = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    assert [row["key"] for row in rows] == ["", "shipping", "café"]
    assert rows[0]["answer"] == 'Nine to five, "weekdays".\nClosed on Sundays.'


def test_export_command_refuses_an_unknown_tenant(db: Any) -> None:
    with pytest.raises(CommandError) as failed:
        call_command("convo_knowledge_export", "--tenant", "nobody", stdout=io.StringIO())
    assert failed.value.returncode == 2


@pytest.mark.parametrize(
    "text",
    ['=HYPERLINK("http://x")', "+1 555 0100", "-5 to 5", "@SUM(A1)", "'=quoted", "''=twice", "'plain"],
)
def test_csv_export_defuses_spreadsheet_formulas_and_imports_back_exactly(tenant: Tenant, text: str) -> None:
    entry_of(tenant, "What does this say?", answer=text)
    exported = export(tenant, "csv")
    (row,) = list(csv.DictReader(io.StringIO(exported.decode(), newline="")))
    formula = text.lstrip("'")[:1] in {"=", "+", "-", "@", "\t", "\r"}
    assert row["answer"] == ("'" + text if formula else text)

    report = run(tenant, exported)

    assert report.counts()["unchanged"] == 1
    assert KnowledgeEntry.objects.get(tenant=tenant).answer == text
