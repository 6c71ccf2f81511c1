"""POST /api/v1/knowledge/import and GET /api/v1/knowledge/export: thin views over
feedback/knowledge_io.py (docs/knowledge.md, "Import and export").

Tenancy: both act on the authenticated tenant only; an import row naming another tenant's entry
id is a row error, the same as an unknown id.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from django.conf import settings
from django.http import StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from pydantic import BaseModel, ConfigDict
from rest_framework import serializers, status
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import MultiPartParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from convo.api.errors import FieldErrors
from convo.api.parsers import BoundedJSONParser
from convo.api.tenancy import request_tenant
from convo.api.validation import parse_payload
from feedback.api.views import request_actor
from feedback.knowledge_io import (
    FORMATS,
    ImportRow,
    ImportTooLarge,
    RowStatus,
    knowledge_export_rows,
    knowledge_export_stream,
    knowledge_import,
    knowledge_import_entries,
    knowledge_import_format,
    knowledge_import_rows,
)

# A multipart body carries the file plus its envelope (boundaries, part headers): allow for those
# before refusing on the declared length alone.
_MULTIPART_MARGIN_BYTES = 64 * 1024


class KnowledgeImportQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    dry_run: bool = False
    ignore_ids: bool = False


class KnowledgeExportQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    format: Literal["csv", "json"] = "json"
    active_only: bool = False


class KnowledgeImportEntrySerializer(serializers.Serializer):
    id = serializers.UUIDField(required=False, allow_null=True, help_text="Update this entry of yours.")
    key = serializers.CharField(required=False, allow_blank=True, help_text="Else update the entry with this key.")
    question = serializers.CharField()
    answer = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField(), required=False)
    active = serializers.BooleanField(required=False, default=True)


class KnowledgeImportBodySerializer(serializers.Serializer):
    entries = KnowledgeImportEntrySerializer(many=True)


class KnowledgeImportUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="A .csv or .json file (or sent as text/csv or application/json).")


@extend_schema_field(
    {"type": "string", "enum": [outcome.value for outcome in RowStatus]}, component_name="KnowledgeImportRowStatus"
)
class _RowStatusField(serializers.ChoiceField):
    """A component of its own name: drf-spectacular would name an extracted enum after the field,
    and ``StatusEnum`` is the conversations' already."""


class KnowledgeImportRowSerializer(serializers.Serializer):
    row = serializers.IntegerField(help_text="1-based; a CSV's header is not counted.")
    status = _RowStatusField(choices=[outcome.value for outcome in RowStatus])
    entry_id = serializers.UUIDField(allow_null=True)

    def get_fields(self) -> dict[str, serializers.Field]:
        # ``errors`` is a Serializer property: declare the field of that name here.
        by_field = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))
        return {**super().get_fields(), "errors": by_field}


class KnowledgeImportCountsSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    updated = serializers.IntegerField()
    unchanged = serializers.IntegerField()

    def get_fields(self) -> dict[str, serializers.Field]:
        return {**super().get_fields(), "errors": serializers.IntegerField()}


class KnowledgeImportReportSerializer(serializers.Serializer):
    dry_run = serializers.BooleanField()
    applied = serializers.BooleanField(help_text="False on a dry run or when any row is bad: nothing was written.")
    counts = KnowledgeImportCountsSerializer()
    rows = KnowledgeImportRowSerializer(many=True)


class KnowledgeExportSerializer(serializers.Serializer):
    entries = KnowledgeImportEntrySerializer(many=True)


def _declared_length(request: Request) -> int:
    declared = str(request.META.get("CONTENT_LENGTH") or "0")
    return int(declared) if declared.isascii() and declared.isdecimal() else 0


def _too_large(field_name: str, size: int) -> ImportTooLarge:
    limit = int(settings.KNOWLEDGE_IMPORT_MAX_BYTES)
    return ImportTooLarge(
        "The import file is too large.",
        fields={field_name: [f"Ensure the file has at most {limit} bytes (got {size})."]},
    )


def _request_rows(request: Request) -> list[ImportRow]:
    """The rows of an uploaded ``file`` or of a JSON body; an oversized upload is refused on its
    declared length, before Django spools it to disk."""
    limit = int(settings.KNOWLEDGE_IMPORT_MAX_BYTES)
    declared = _declared_length(request)
    if not request.content_type.lower().startswith("multipart/form-data"):
        if declared > limit:
            raise _too_large("body", declared)
        return knowledge_import_entries(data=request.data, field_name="entries")
    if declared > limit + _MULTIPART_MARGIN_BYTES:
        raise _too_large("file", declared)
    upload = request.FILES.get("file")
    if upload is None:
        raise FieldErrors({"file": ["Attach the CSV or JSON file to import as `file`."]})
    if upload.size is not None and upload.size > limit:
        raise _too_large("file", upload.size)
    file_format = knowledge_import_format(name=upload.name or "", content_type=upload.content_type or "")
    if file_format is None:
        raise FieldErrors({"file": ["Cannot tell the format: name the file .csv or .json, or send it as text/csv."]})
    return knowledge_import_rows(content=upload.read(), file_format=file_format, field_name="file")


class KnowledgeImportView(APIView):
    parser_classes = [MultiPartParser, BoundedJSONParser]

    @extend_schema(
        operation_id="knowledge_import",
        parameters=[
            OpenApiParameter("dry_run", OpenApiTypes.BOOL, description="Check and report; write nothing."),
            OpenApiParameter(
                "ignore_ids", OpenApiTypes.BOOL, description="Match by key only (to copy another tenant's export)."
            ),
        ],
        request={
            "multipart/form-data": KnowledgeImportUploadSerializer,
            "application/json": KnowledgeImportBodySerializer,
        },
        responses={
            200: KnowledgeImportReportSerializer,
            400: OpenApiResponse(
                OpenApiTypes.OBJECT,
                description="Some rows are bad: the report (every bad row with its fields; nothing written) plus "
                "`error`. Or the file is refused whole (malformed, too many rows): the error shape naming `file` "
                "(or `entries`).",
            ),
            413: OpenApiResponse(OpenApiTypes.OBJECT, description="Larger than KNOWLEDGE_IMPORT_MAX_BYTES."),
        },
        description="Import knowledge entries (CSV or JSON upload, or a JSON body). Rows match entries by `id`, "
        "then `key`; other rows create entries (source `import`). All or nothing.",
    )
    def post(self, request: Request) -> Response:
        query = parse_payload(KnowledgeImportQuery, request.query_params.dict())
        rows = _request_rows(request)
        report = knowledge_import(
            tenant=request_tenant(request),
            rows=rows,
            actor=request_actor(request),
            dry_run=query.dry_run,
            ignore_ids=query.ignore_ids,
        )
        body = report.as_dict()
        if report.ok:
            return Response(body)
        bad = report.counts()["errors"]
        body["error"] = {"code": "invalid_rows", "message": f"{bad} rows have errors; nothing was imported."}
        return Response(body, status=status.HTTP_400_BAD_REQUEST)


class _ExportFormatParameter(DefaultContentNegotiation):
    """``format`` here is the export's own parameter, not DRF's renderer override (which would
    answer 404 for ``csv``, a format no renderer has): the body is streamed by the view, and
    errors are JSON."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type


class KnowledgeExportView(APIView):
    content_negotiation_class = _ExportFormatParameter

    @extend_schema(
        operation_id="knowledge_export",
        parameters=[
            OpenApiParameter("format", OpenApiTypes.STR, enum=list(FORMATS), description="Default: json."),
            OpenApiParameter("active_only", OpenApiTypes.BOOL, description="Leave inactive entries out."),
        ],
        responses={
            (200, "application/json"): KnowledgeExportSerializer,
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="A CSV file with a header row."),
            400: OpenApiResponse(OpenApiTypes.OBJECT, description="An invalid parameter (the field is named)."),
        },
        description="The tenant's knowledge entries in id order, in the form the import reads back.",
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        query = parse_payload(KnowledgeExportQuery, request.query_params.dict())
        tenant = request_tenant(request)
        rows = knowledge_export_rows(tenant=tenant, active_only=query.active_only)
        stream = knowledge_export_stream(rows=rows, file_format=query.format)
        if query.format == "json":
            return StreamingHttpResponse(stream, content_type="application/json")
        response = StreamingHttpResponse(stream, content_type="text/csv; charset=utf-8")
        filename = f"knowledge-{tenant.slug}-{timezone.now():%Y%m%d}.csv"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response
