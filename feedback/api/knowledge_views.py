"""The knowledge base under /api/v1/knowledge: entries and their history, search, and the answer
lookup. Each action parses its input, calls one service or selector, serializes.

Tenancy comes from ``TenantScopedViewSet``: an entry id of another tenant is a 404, and search
and lookup only ever read the caller's entries.
"""

from __future__ import annotations

from typing import cast

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from conversations.api.search_views import active_space, query_vector
from conversations.api.views import UUID_PATTERN
from convo.api.tenancy import TenantScopedViewSet
from convo.api.validation import parse_payload
from convo.db_router import replica_reads
from convo.monitoring.prometheus import metrics_lookup_count
from convo.monitoring.timed_views import TimedViewMixin
from feedback.api import serializers as out
from feedback.api.views import ERRORS, PAGE_PARAMETERS, page_response, request_actor
from feedback.knowledge import (
    knowledge_entry_create,
    knowledge_entry_delete,
    knowledge_entry_update,
    knowledge_fields_clean,
    knowledge_lookup_count,
)
from feedback.models import KnowledgeEntry, KnowledgeSource
from feedback.payloads import (
    KnowledgeEntryIn,
    KnowledgeEntryPatch,
    KnowledgeListQuery,
    KnowledgeLookupIn,
    KnowledgeSearchIn,
)
from feedback.retrieval import knowledge_answer_lookup, knowledge_search
from feedback.selectors import KNOWLEDGE_ORDERING, knowledge_entries_filtered

UNAVAILABLE = {503: OpenApiResponse(OpenApiTypes.OBJECT, description="The embedding model is unavailable; retry.")}
LIST_PARAMETERS = [
    OpenApiParameter("source", OpenApiTypes.STR, enum=KnowledgeSource.values, description="Only this source."),
    OpenApiParameter("active", OpenApiTypes.BOOL, description="Only active (true) or inactive (false) entries."),
    OpenApiParameter("tag", OpenApiTypes.STR, description="Only entries with this tag."),
    *PAGE_PARAMETERS,
]


class KnowledgeViewSet(TimedViewMixin, TenantScopedViewSet):
    """Knowledge entries: approved answers the answer lookup returns for look-alike questions."""

    # The answer lookup is timed request to response (docs/operations.md, "Timings").
    timing_operation = "answer_lookup"
    timing_actions = frozenset({"lookup"})

    base_queryset = KnowledgeEntry.objects.all()
    serializer_class = out.KnowledgeEntrySerializer
    lookup_value_regex = UUID_PATTERN

    @extend_schema(
        parameters=LIST_PARAMETERS,
        responses={200: out.KnowledgeEntryPageSerializer, 400: ERRORS[400]},
        description="The tenant's entries, most recently changed first, by keyset pages.",
    )
    def list(self, request: Request) -> Response:
        query: KnowledgeListQuery = parse_payload(KnowledgeListQuery, request.query_params.dict())
        entries = knowledge_entries_filtered(
            entries=cast(QuerySet[KnowledgeEntry], self.get_queryset()),
            source=query.source,
            active=query.active,
            tag=query.tag,
        )
        return page_response(
            request, entries, keys=KNOWLEDGE_ORDERING, query=query, output=out.KnowledgeEntrySerializer
        )

    @extend_schema(
        request=KnowledgeEntryIn,
        responses={201: out.KnowledgeEntrySerializer, 400: ERRORS[400]},
        description="Add an entry (version 1). Its question is embedded in the background; until then it is "
        "found by full-text search only.",
    )
    def create(self, request: Request) -> Response:
        payload = parse_payload(KnowledgeEntryIn, request.data)
        entry = knowledge_entry_create(
            tenant=self.tenant,
            fields=knowledge_fields_clean(question=payload.question, answer=payload.answer, tags=payload.tags),
            actor=request_actor(request),
            key=payload.key,
            active=payload.active,
        )
        return Response(out.KnowledgeEntrySerializer(entry).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: out.KnowledgeEntrySerializer, 404: ERRORS[404]})
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(out.KnowledgeEntrySerializer(self.get_object()).data)

    @extend_schema(
        request=KnowledgeEntryPatch,
        responses={200: out.KnowledgeEntrySerializer, **ERRORS},
        description="Change the question, answer, tags or active flag. A change writes a new version (the "
        "history keeps the old one); a new question is embedded again. A request that changes nothing "
        "writes nothing.",
    )
    def partial_update(self, request: Request, pk: str) -> Response:
        payload = parse_payload(KnowledgeEntryPatch, request.data)
        entry = knowledge_entry_update(
            entry=self.get_object(),
            actor=request_actor(request),
            question=payload.question,
            answer=payload.answer,
            tags=payload.tags,
            active=payload.active,
        )
        return Response(out.KnowledgeEntrySerializer(entry).data)

    @extend_schema(
        responses={204: None, 404: ERRORS[404]},
        description="Delete the entry with its history and vectors. To keep it but stop returning it, "
        "PATCH `active: false` instead.",
    )
    def destroy(self, request: Request, pk: str) -> Response:
        knowledge_entry_delete(entry=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        responses={200: out.KnowledgeVersionSerializer(many=True), 404: ERRORS[404]},
        description="The entry's history, newest version first.",
    )
    @action(detail=True, methods=["get"])
    def versions(self, request: Request, pk: str) -> Response:
        entry = self.get_object()
        return Response(out.KnowledgeVersionSerializer(entry.versions.order_by("-version"), many=True).data)

    @extend_schema(
        request=KnowledgeSearchIn,
        responses={200: out.KnowledgeSearchResultSerializer, 400: ERRORS[400], **UNAVAILABLE},
        description="The best active entries for a query: by the meaning of their questions (`vector`), by "
        "the words of question and answer (`text`), or both fused by reciprocal rank (`hybrid`, the default).",
    )
    @action(detail=False, methods=["post"])
    @replica_reads()
    def search(self, request: Request) -> Response:
        payload = parse_payload(KnowledgeSearchIn, request.data)
        space = vector = None
        if payload.mode != "text":
            space, embedder = active_space()
            vector = query_vector(payload.query, embedder)
        result = knowledge_search(
            tenant=self.tenant,
            mode=payload.mode,
            k=payload.k,
            query=payload.query,
            space=space,
            vector=vector,
            tags=payload.tags or None,
        )
        return Response(out.KnowledgeSearchResultSerializer(result).data)

    @extend_schema(
        request=KnowledgeLookupIn,
        responses={200: out.AnswerLookupSerializer, 400: ERRORS[400], **UNAVAILABLE},
        description="The best approved answer for a new question, with a decision: `answer` (send it), "
        "`suggest` (show it to a person first) or `no_match`. The thresholds are settings "
        "(KNOWLEDGE_ANSWER_MIN_SIMILARITY, KNOWLEDGE_ANSWER_MIN_AGREEMENT, KNOWLEDGE_SUGGEST_MIN_SIMILARITY). "
        "Every lookup is counted for the hit rate in /feedback/stats.",
    )
    @action(detail=False, methods=["post"])
    def lookup(self, request: Request) -> Response:
        payload = parse_payload(KnowledgeLookupIn, request.data)
        space, embedder = active_space()
        result = knowledge_answer_lookup(
            tenant=self.tenant, space=space, vector=query_vector(payload.question, embedder, field="question")
        )
        knowledge_lookup_count(tenant=self.tenant, decision=result.decision)
        metrics_lookup_count(decision=result.decision)
        return Response(out.AnswerLookupSerializer(result).data)
