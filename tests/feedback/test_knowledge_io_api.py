"""POST /api/v1/knowledge/import and GET /api/v1/knowledge/export: uploads and JSON bodies, the
report on 200 and 400, field-naming refusals, limits, dry runs, and tenancy."""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.parsers import MultiPartParser
from rest_framework.test import APIClient

from clustering.services.moderation import Actor
from conversations.models import Tenant
from feedback.knowledge import knowledge_entry_create, knowledge_fields_clean
from feedback.models import KnowledgeEntry, KnowledgeSource

pytestmark = pytest.mark.django_db

IMPORT = "/api/v1/knowledge/import"
EXPORT = "/api/v1/knowledge/export"


def entry_of(tenant: Tenant, question: str, **extra: Any) -> KnowledgeEntry:
    fields = knowledge_fields_clean(question=question, answer="An answer.")
    return knowledge_entry_create(tenant=tenant, fields=fields, actor=Actor(label="test"), **extra)


def upload(api: APIClient, name: str, content: bytes, content_type: str = "", query: str = "") -> Any:
    file = SimpleUploadedFile(name, content, content_type=content_type or "application/octet-stream")
    return api.post(f"{IMPORT}{query}", {"file": file}, format="multipart")


def test_a_csv_upload_is_imported_and_reported(api: APIClient, tenant: Tenant) -> None:
    response = upload(api, "kb.csv", b"key,question,answer,tags\nhours,When do you open?,At nine.,a|b\n")

    assert response.status_code == 200, response.content
    body = response.json()
    entry = KnowledgeEntry.objects.get(tenant=tenant)
    assert body == {
        "dry_run": False,
        "applied": True,
        "counts": {"created": 1, "updated": 0, "unchanged": 0, "errors": 0},
        "rows": [{"row": 1, "status": "created", "entry_id": str(entry.pk), "errors": {}}],
    }
    assert (entry.key, entry.tags, entry.source, entry.version) == ("hours", ["a", "b"], KnowledgeSource.IMPORT, 1)
    assert entry.updated_by.startswith("api-key:")


def test_a_json_upload_is_recognised_by_its_content_type(api: APIClient, tenant: Tenant) -> None:
    content = orjson.dumps([{"question": "Q?", "answer": "A."}])
    response = upload(api, "export", content, content_type="application/json")
    assert response.status_code == 200, response.content
    assert KnowledgeEntry.objects.filter(tenant=tenant).count() == 1


def test_a_json_body_updates_by_key(api: APIClient, tenant: Tenant) -> None:
    existing = entry_of(tenant, "When do you open?", key="hours")
    body = {"entries": [{"key": "hours", "question": "When do you open?", "answer": "At ten."}]}

    response = api.post(IMPORT, body, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["rows"][0] == {"row": 1, "status": "updated", "entry_id": str(existing.pk), "errors": {}}
    existing.refresh_from_db()
    assert (existing.answer, existing.version) == ("At ten.", 2)
    assert existing.versions.get(version=2).change == "imported"


def test_a_bad_row_answers_400_with_the_report_and_writes_nothing(api: APIClient, tenant: Tenant) -> None:
    body = {
        "entries": [
            {"question": "Good?", "answer": "Yes."},
            {"question": "", "answer": "No question."},
            {"question": "No answer?"},
        ]
    }
    response = api.post(IMPORT, body, format="json")

    assert response.status_code == 400
    report = response.json()
    assert report["applied"] is False
    assert report["counts"] == {"created": 1, "updated": 0, "unchanged": 0, "errors": 2}
    assert [(r["row"], r["status"], sorted(r["errors"])) for r in report["rows"]] == [
        (1, "created", []),
        (2, "error", ["question"]),
        (3, "error", ["answer"]),
    ]
    assert report["error"]["code"] == "invalid_rows"
    assert not KnowledgeEntry.objects.filter(tenant=tenant).exists()


def test_dry_run_reports_without_writing(api: APIClient, tenant: Tenant) -> None:
    response = api.post(f"{IMPORT}?dry_run=true", {"entries": [{"question": "Q?", "answer": "A."}]}, format="json")

    assert response.status_code == 200
    assert (response.json()["dry_run"], response.json()["applied"]) == (True, False)
    assert response.json()["rows"][0]["status"] == "created"
    assert not KnowledgeEntry.objects.filter(tenant=tenant).exists()


@pytest.mark.parametrize(
    ("name", "content", "content_type", "says"),
    [
        ("kb.json", b'{"entries": [', "", "not valid JSON"),
        ("kb.csv", b"colour\nred\n", "", "Unknown column"),
        ("kb.bin", b"question,answer\nQ?,A.\n", "application/octet-stream", "Cannot tell the format"),
    ],
)
def test_a_refused_upload_answers_400_naming_file(
    api: APIClient, name: str, content: bytes, content_type: str, says: str
) -> None:
    response = upload(api, name, content, content_type)

    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert list(fields) == ["file"]
    assert says in fields["file"][0]


def test_a_multipart_request_without_a_file_names_file(api: APIClient) -> None:
    response = api.post(IMPORT, {"other": "x"}, format="multipart")
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["file"]


def test_a_malformed_json_body_names_body(api: APIClient) -> None:
    response = api.post(IMPORT, b"{nope", content_type="application/json")
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["body"]


def test_an_upload_at_the_byte_limit_is_read_and_one_more_is_413(api: APIClient, tenant: Tenant, settings: Any) -> None:
    content = b"question,answer\nQ?,A.\n"
    settings.KNOWLEDGE_IMPORT_MAX_BYTES = len(content)

    assert upload(api, "kb.csv", content).status_code == 200
    response = upload(api, "kb.csv", content + b"\n")

    assert response.status_code == 413
    assert list(response.json()["error"]["fields"]) == ["file"]
    assert KnowledgeEntry.objects.filter(tenant=tenant).count() == 1


def test_an_upload_declared_far_past_the_limit_is_refused_before_parsing(
    api: APIClient, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.KNOWLEDGE_IMPORT_MAX_BYTES = 10

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the body was parsed")

    monkeypatch.setattr(MultiPartParser, "parse", never)
    response = upload(api, "kb.csv", b"question,answer\n" + b"Q?,A.\n" * 20_000)

    assert response.status_code == 413
    assert list(response.json()["error"]["fields"]) == ["file"]


def test_a_json_body_past_the_byte_limit_is_413_naming_body(api: APIClient, settings: Any) -> None:
    body = {"entries": [{"question": "Q?", "answer": "A."}]}
    settings.KNOWLEDGE_IMPORT_MAX_BYTES = len(orjson.dumps(body))

    assert api.post(IMPORT, body, format="json").status_code == 200
    response = api.post(IMPORT, {"entries": [{"question": "Q?", "answer": "AB."}]}, format="json")

    assert response.status_code == 413
    assert list(response.json()["error"]["fields"]) == ["body"]


def test_rows_at_the_limit_are_imported_and_one_more_is_refused_naming_entries(
    api: APIClient, tenant: Tenant, settings: Any
) -> None:
    settings.KNOWLEDGE_IMPORT_MAX_ROWS = 2
    rows = [{"question": f"Q{n}?", "answer": "A."} for n in range(3)]

    refused = api.post(IMPORT, {"entries": rows}, format="json")
    accepted = api.post(IMPORT, {"entries": rows[:2]}, format="json")

    assert refused.status_code == 400
    assert refused.json()["error"]["fields"] == {"entries": ["Ensure there are at most 2 rows."]}
    assert accepted.status_code == 200
    assert KnowledgeEntry.objects.filter(tenant=tenant).count() == 2


def test_another_tenants_entry_id_is_a_row_error(api: APIClient, other_tenant: Tenant) -> None:
    theirs = entry_of(other_tenant, "Their question?")
    body = {"entries": [{"id": str(theirs.pk), "question": "Taken over?", "answer": "Taken."}]}

    response = api.post(IMPORT, body, format="json")

    assert response.status_code == 400
    assert response.json()["rows"][0]["errors"] == {"id": ["This tenant has no entry with this id."]}
    theirs.refresh_from_db()
    assert (theirs.question, theirs.version) == ("Their question?", 1)


def test_export_as_csv_is_a_named_text_csv_file(api: APIClient, tenant: Tenant, other_tenant: Tenant) -> None:
    first = entry_of(tenant, "First?", key="one")
    entry_of(tenant, "Second, inactive?", active=False)
    entry_of(other_tenant, "Not mine?")

    response = api.get(f"{EXPORT}?format=csv")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith(f'attachment; filename="knowledge-{tenant.slug}-')
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode(), newline="")))
    assert (rows[0]["id"], rows[0]["key"], rows[0]["active"]) == (str(first.pk), "one", "true")
    assert [r["question"] for r in rows] == ["First?", "Second, inactive?"]


def test_export_as_json_reimports_as_unchanged(api: APIClient, tenant: Tenant, other_api: APIClient) -> None:
    entry_of(tenant, "Active?")
    entry_of(tenant, "Inactive?", active=False)

    response = api.get(f"{EXPORT}?active_only=true")
    other = other_api.get(EXPORT)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    exported = orjson.loads(b"".join(response.streaming_content))
    assert [e["question"] for e in exported["entries"]] == ["Active?"]
    assert orjson.loads(b"".join(other.streaming_content)) == {"entries": []}
    again = api.post(IMPORT, exported, format="json")
    assert again.json()["counts"] == {"created": 0, "updated": 0, "unchanged": 1, "errors": 0}


def test_an_export_copies_into_another_tenant_with_ignore_ids(
    api: APIClient, other_api: APIClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    entry_of(tenant, "Copied?", key="copied")
    exported = b"".join(api.get(f"{EXPORT}?format=csv").streaming_content)

    refused = upload(other_api, "kb.csv", exported)
    copied = upload(other_api, "kb.csv", exported, query="?ignore_ids=true")

    assert refused.status_code == 400
    assert copied.status_code == 200, copied.content
    assert KnowledgeEntry.objects.get(tenant=other_tenant).key == "copied"


def test_export_refuses_an_unknown_format_naming_it(api: APIClient) -> None:
    response = api.get(f"{EXPORT}?format=xml")
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["format"]


def test_import_and_export_need_an_api_key() -> None:
    client = APIClient()
    assert client.get(EXPORT).status_code == 401
    assert client.post(IMPORT, {"entries": []}, format="json").status_code == 401
