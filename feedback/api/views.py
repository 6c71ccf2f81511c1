"""The feedback API under /api/v1/: feedback, owner corrections, response analytics and voice
transcripts posted by the chat backend (and listed back), the learning queue and its review, and
the counters. Each action parses its input, calls one service or selector, serializes.

Tenancy: lists and the learning items in the path come from ``TenantScopedViewSet`` (404 for
another tenant's); the ids in a body or a filter are looked up for the tenant by the service or
selector, and answer 404 naming the field when the tenant has no such row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer

from clustering.payloads import PageQuery
from clustering.services.moderation import Actor
from conversations.api.views import UUID_PATTERN
from convo.api.pagination import keyset_page
from convo.api.principal import TenantPrincipal
from convo.api.tenancy import TenantScopedViewSet
from convo.api.validation import parse_payload
from feedback.api import serializers as out
from feedback.models import (
    Feedback,
    LearningItem,
    LearningSource,
    LearningStatus,
    OwnerCorrection,
    ResponseAnalytics,
    VoiceTranscript,
)
from feedback.payloads import (
    AnalyticsIn,
    CorrectionIn,
    FeedbackIn,
    LearningApproveIn,
    LearningItemListQuery,
    LearningRejectIn,
    RecordListQuery,
    TranscriptIn,
)
from feedback.selectors import (
    LEARNING_ORDERING,
    RECORD_ORDERING,
    feedback_stats,
    learning_items_filtered,
    records_of_conversation,
)
from feedback.services import (
    analytics_record,
    correction_record,
    feedback_record,
    learning_item_approve,
    learning_item_reject,
    transcript_record,
)

ERRORS = {
    400: OpenApiResponse(OpenApiTypes.OBJECT, description="Invalid input; `error.fields` names each bad field."),
    404: OpenApiResponse(
        OpenApiTypes.OBJECT, description="No such conversation, message or item for this tenant (the field is named)."
    ),
}
CONFLICT = {409: OpenApiResponse(OpenApiTypes.OBJECT, description="The item is not pending (already reviewed).")}
PAGE_PARAMETERS = [
    OpenApiParameter("page_size", OpenApiTypes.INT, description="Items per page (1 to CONVO_MAX_PAGE_SIZE)."),
    OpenApiParameter("cursor", OpenApiTypes.STR, description="The `next` or `previous` cursor of another page."),
]
RECORD_PARAMETERS = [
    OpenApiParameter("conversation_id", OpenApiTypes.UUID, description="Only this conversation's records."),
    *PAGE_PARAMETERS,
]
LEARNING_PARAMETERS = [
    OpenApiParameter("status", OpenApiTypes.STR, enum=LearningStatus.values, description="Only this status."),
    OpenApiParameter("source", OpenApiTypes.STR, enum=LearningSource.values, description="Only this source."),
    *PAGE_PARAMETERS,
]


def request_actor(request: Request) -> Actor:
    """A review by API names the caller by its key's public prefix (never the key's hash)."""
    principal = request.user
    if not isinstance(principal, TenantPrincipal):  # IsTenant has already refused such requests
        raise PermissionError("request is not authenticated as a tenant")
    prefix, _, _ = principal.api_key_id.partition(".")
    return Actor(label=f"api-key:{prefix}")


def page_response(
    request: Request, rows: QuerySet[Any], *, keys: Sequence[str], query: PageQuery, output: type[Serializer]
) -> Response:
    """One keyset page of ``rows``, serialized by ``output``, with ``next``/``previous`` links that
    carry the validated query (the feedback and knowledge lists all answer this way)."""
    page = keyset_page(rows, keys=keys, cursor=query.cursor, size=query.page_size)
    params = query.model_dump(mode="json", exclude_none=True, exclude={"cursor"})
    data = output(page.items, many=True).data
    return Response(page.body(request.build_absolute_uri(request.path), params, data))


class _RecordViewSet(TenantScopedViewSet):
    """List (newest first, by keyset pages, optionally of one conversation) and create."""

    output: type[Serializer]

    def page(self, request: Request) -> Response:
        query: RecordListQuery = parse_payload(RecordListQuery, request.query_params.dict())
        records: QuerySet[Any] = records_of_conversation(
            records=self.get_queryset(), tenant=self.tenant, conversation_id=query.conversation_id
        )
        return page_response(request, records, keys=RECORD_ORDERING, query=query, output=self.output)

    def created(self, record: Any) -> Response:
        return Response(self.output(record).data, status=status.HTTP_201_CREATED)


class FeedbackViewSet(_RecordViewSet):
    """Thumbs and ratings on a conversation or one response."""

    base_queryset = Feedback.objects.select_related("learning_item")
    output = out.FeedbackSerializer

    @extend_schema(parameters=RECORD_PARAMETERS, responses={200: out.FeedbackPageSerializer, **ERRORS})
    def list(self, request: Request) -> Response:
        return self.page(request)

    @extend_schema(
        request=FeedbackIn,
        responses={201: out.FeedbackSerializer, **ERRORS},
        description="Record a thumbs (`up`/`down`) or a rating (1-5). A thumbs down, or a rating at or below "
        "FEEDBACK_LOW_RATING_THRESHOLD, also queues a learning item (`low: true`).",
    )
    def create(self, request: Request) -> Response:
        return self.created(feedback_record(tenant=self.tenant, payload=parse_payload(FeedbackIn, request.data)))

    @extend_schema(
        responses={200: out.FeedbackStatsSerializer},
        description="Feedback by rating, thumbs and channel; owner corrections; the learning queue by status.",
    )
    @action(detail=False, methods=["get"])
    def stats(self, request: Request) -> Response:
        return Response(out.FeedbackStatsSerializer(feedback_stats(tenant=self.tenant)).data)


class CorrectionViewSet(_RecordViewSet):
    """Owner corrections: each one queues a learning item."""

    base_queryset = OwnerCorrection.objects.select_related("learning_item")
    output = out.CorrectionSerializer

    @extend_schema(parameters=RECORD_PARAMETERS, responses={200: out.CorrectionPageSerializer, **ERRORS})
    def list(self, request: Request) -> Response:
        return self.page(request)

    @extend_schema(
        request=CorrectionIn,
        responses={201: out.CorrectionSerializer, **ERRORS},
        description="Record an owner's correction of a response; it queues a learning item for review.",
    )
    def create(self, request: Request) -> Response:
        return self.created(correction_record(tenant=self.tenant, payload=parse_payload(CorrectionIn, request.data)))


class AnalyticsViewSet(_RecordViewSet):
    """How responses were made: latency, model, tokens, cost, cache."""

    base_queryset = ResponseAnalytics.objects.all()
    output = out.AnalyticsSerializer

    @extend_schema(parameters=RECORD_PARAMETERS, responses={200: out.AnalyticsPageSerializer, **ERRORS})
    def list(self, request: Request) -> Response:
        return self.page(request)

    @extend_schema(request=AnalyticsIn, responses={201: out.AnalyticsSerializer, **ERRORS})
    def create(self, request: Request) -> Response:
        return self.created(analytics_record(tenant=self.tenant, payload=parse_payload(AnalyticsIn, request.data)))


class TranscriptViewSet(_RecordViewSet):
    """Voice transcripts attached to conversations."""

    base_queryset = VoiceTranscript.objects.all()
    output = out.TranscriptSerializer

    @extend_schema(parameters=RECORD_PARAMETERS, responses={200: out.TranscriptPageSerializer, **ERRORS})
    def list(self, request: Request) -> Response:
        return self.page(request)

    @extend_schema(request=TranscriptIn, responses={201: out.TranscriptSerializer, **ERRORS})
    def create(self, request: Request) -> Response:
        return self.created(transcript_record(tenant=self.tenant, payload=parse_payload(TranscriptIn, request.data)))


class LearningItemViewSet(TenantScopedViewSet):
    """The learning queue: items from corrections, low ratings and answered clusters, and their review."""

    base_queryset = LearningItem.objects.all()
    serializer_class = out.LearningItemSerializer
    lookup_value_regex = UUID_PATTERN

    @extend_schema(
        parameters=LEARNING_PARAMETERS,
        responses={200: out.LearningItemPageSerializer, 400: ERRORS[400]},
        description="The tenant's learning items, oldest first (the review order), by keyset pages.",
    )
    def list(self, request: Request) -> Response:
        query: LearningItemListQuery = parse_payload(LearningItemListQuery, request.query_params.dict())
        items = learning_items_filtered(
            items=cast(QuerySet[LearningItem], self.get_queryset()), status=query.status, source=query.source
        )
        return page_response(request, items, keys=LEARNING_ORDERING, query=query, output=out.LearningItemSerializer)

    @extend_schema(responses={200: out.LearningItemSerializer, 404: ERRORS[404]})
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(out.LearningItemSerializer(self.get_object()).data)

    @extend_schema(
        request=LearningApproveIn,
        responses={200: out.LearningItemSerializer, **ERRORS, **CONFLICT},
        description="Approve a pending item, with its proposed answer or an edited `answer` (required when it "
        "proposes none, as low-rating items do), and take it into the knowledge base: it ends `applied`, with "
        "`entry_id` the entry it created or updated (or stays `approved` when it has no question; give "
        "`question`). 409 unless pending.",
    )
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str) -> Response:
        payload = parse_payload(LearningApproveIn, request.data)
        item = learning_item_approve(
            item=self.get_object(),
            actor=request_actor(request),
            answer=payload.answer,
            question=payload.question,
            note=payload.note,
        )
        return Response(out.LearningItemSerializer(item).data)

    @extend_schema(
        request=LearningRejectIn,
        responses={200: out.LearningItemSerializer, **ERRORS, **CONFLICT},
        description="Reject a pending item. 409 unless pending.",
    )
    @action(detail=True, methods=["post"])
    def reject(self, request: Request, pk: str) -> Response:
        payload = parse_payload(LearningRejectIn, request.data)
        item = learning_item_reject(item=self.get_object(), actor=request_actor(request), note=payload.note)
        return Response(out.LearningItemSerializer(item).data)
