"""POST /api/v1/search and POST /api/v1/context: thin views over the search and context selectors."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from conversations.context import context_build
from conversations.embeddings.base import Embedder, EmbeddingError, EmbeddingUnavailable
from conversations.models import EmbeddingSpace
from conversations.payloads import ContextIn, SearchIn
from conversations.search import (
    Ranking,
    SearchFilters,
    SearchResult,
    message_hybrid_search,
    message_search,
    message_words_search,
)
from conversations.search_cache import search_cache_enabled, search_cache_get, search_cache_key, search_cache_set
from conversations.services.embedding_cache import embed_texts_cached, text_normalize
from convo.api.errors import FieldErrors
from convo.api.tenancy import request_tenant
from convo.api.validation import parse_payload
from convo.db_router import replica_reads
from convo.errors import Overloaded
from convo.monitoring.timed_views import TimedViewMixin


class SearchHitSerializer(serializers.Serializer):
    message_id = serializers.UUIDField()
    conversation_id = serializers.UUIDField()
    text = serializers.CharField()
    role = serializers.CharField()
    channel = serializers.CharField()
    user_id = serializers.CharField()
    created_at = serializers.DateTimeField()
    similarity = serializers.FloatField(allow_null=True)
    score = serializers.FloatField()


class SearchResultSerializer(serializers.Serializer):
    results = SearchHitSerializer(many=True)
    strategy = serializers.CharField()
    threshold = serializers.FloatField(allow_null=True)
    matching = serializers.IntegerField(help_text="Rows the filters match (counted up to the exact-scan cap).")
    cached = serializers.BooleanField()


class ContextItemSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["recent", "relevant", "summary"])
    id = serializers.UUIDField()
    conversation_id = serializers.UUIDField()
    role = serializers.CharField()
    text = serializers.CharField()
    created_at = serializers.DateTimeField()
    tokens = serializers.IntegerField()
    similarity = serializers.FloatField(allow_null=True)


class ContextSerializer(serializers.Serializer):
    items = ContextItemSerializer(many=True)
    tokens = serializers.IntegerField()
    budget = serializers.IntegerField()
    truncated = serializers.BooleanField()
    text = serializers.CharField()


def active_space() -> tuple[EmbeddingSpace, Embedder]:
    from django.core.exceptions import ImproperlyConfigured

    from conversations.services.embedding_spaces import embedding_space_active_embedder

    try:
        active = embedding_space_active_embedder()
    except ImproperlyConfigured as exc:  # e.g. the active model's API key is missing in this process
        raise Overloaded(f"The active embedding model cannot be used here: {exc}", retry_after=30) from None
    if active is None:  # pragma: no cover - the function creates the first space when none exists
        raise Overloaded("No embedding model is active yet.", retry_after=5)
    return active


def query_vector(text: str, embedder: Embedder, *, field: str = "query") -> list[float]:
    """The query's vector, through the same cache as stored texts (repeated queries are free).
    Errors name ``field``, the request field the text came from."""
    normalized = text_normalize(text)
    if not normalized:
        raise FieldErrors({field: ["must not be blank"]})
    try:
        outcome = embed_texts_cached(embedder=embedder, texts=[normalized], count=False)
    except EmbeddingUnavailable as exc:
        raise Overloaded(f"The embedding provider is unavailable: {exc}", retry_after=5) from None
    except EmbeddingError as exc:
        raise FieldErrors({field: [str(exc)]}) from None
    if normalized not in outcome.vectors:
        raise FieldErrors({field: [outcome.failures.get(normalized, "could not be embedded")]})
    return outcome.vectors[normalized]


def _space_for(payload: SearchIn) -> tuple[EmbeddingSpace, Embedder | None]:
    """The active space, and its embedder only when a text must be embedded: a query that brings
    its own vector is answered even where the model cannot be built (no API key in this process)
    and never waits for a model to load."""
    from conversations.services.embedding_spaces import embedding_space_active

    if payload.vector is not None:
        space = embedding_space_active()
        if space is not None:
            return space, None
    return active_space()


def _filters(payload: SearchIn) -> SearchFilters:
    f = payload.filters
    return SearchFilters(
        user_id=f.user_id,
        channel=f.channel.value if f.channel else None,
        status=f.status.value if f.status else None,
        role=f.role.value if f.role else None,
        metadata=f.metadata,
        created_after=f.created_after,
        created_before=f.created_before,
    )


class SearchView(TimedViewMixin, APIView):
    timing_operation = "search"

    @extend_schema(request=SearchIn, responses={200: SearchResultSerializer, 503: OpenApiTypes.OBJECT})
    @replica_reads()
    def post(self, request: Request) -> Response:
        payload = parse_payload(SearchIn, request.data)
        tenant = request_tenant(request)
        space, embedder = _space_for(payload)
        if payload.vector is not None and len(payload.vector) != space.dimensions:
            raise FieldErrors({"vector": [f"must have {space.dimensions} dimensions (the active model's)"]})
        key = search_cache_key(
            tenant_id=tenant.pk,
            user_id=payload.filters.user_id,
            request={"space": space.pk, **payload.model_dump(mode="json")},
        )
        cached = search_cache_get(key) if search_cache_enabled() else None
        if cached is not None:
            return Response({**cached, "cached": True})

        filters = _filters(payload)
        ranking = Ranking(
            min_similarity=payload.min_similarity,
            time_weight=payload.time_weight,
            channel_weight=payload.channel_weight,
            adaptive=payload.adaptive,
            channel=payload.channel.value if payload.channel else None,
        )
        if payload.mode == "text":
            result = message_words_search(
                tenant=tenant, query=payload.query or "", filters=filters, k=payload.k, ranking=ranking
            )
        else:
            if payload.vector is not None:
                vector = payload.vector
            else:
                assert embedder is not None  # _space_for builds it whenever there is no vector
                vector = query_vector(payload.query or "", embedder)
            if payload.mode == "hybrid":
                result = message_hybrid_search(
                    tenant=tenant,
                    space=space,
                    vector=vector,
                    query=payload.query or "",
                    filters=filters,
                    k=payload.k,
                    ranking=ranking,
                )
            else:
                result = message_search(
                    tenant=tenant, space=space, vector=vector, filters=filters, k=payload.k, ranking=ranking
                )
        body = _result_body(result)
        if search_cache_enabled():
            search_cache_set(key, body)
        return Response({**body, "cached": False})


def _result_body(result: SearchResult) -> dict[str, Any]:
    results = []
    for hit in result.hits:
        row = SearchHitSerializer(hit).data
        if hit.similarity != hit.similarity:  # NaN: the hit came from the words alone
            row["similarity"] = None
        results.append(row)
    threshold = None if result.threshold < 0 else result.threshold
    return {"results": results, "strategy": result.strategy, "threshold": threshold, "matching": result.matching}


class ContextView(TimedViewMixin, APIView):
    timing_operation = "context_build"

    @extend_schema(request=ContextIn, responses={200: ContextSerializer, 503: OpenApiTypes.OBJECT})
    def post(self, request: Request) -> Response:
        payload = parse_payload(ContextIn, request.data)
        budget = payload.token_budget or settings.CONTEXT_DEFAULT_TOKEN_BUDGET
        if budget > settings.CONTEXT_MAX_TOKEN_BUDGET:
            raise FieldErrors({"token_budget": [f"must be at most {settings.CONTEXT_MAX_TOKEN_BUDGET}"]})
        space: EmbeddingSpace | None = None
        vector = None
        if payload.query and payload.query.strip():
            space, embedder = active_space()
            vector = query_vector(payload.query, embedder)
        context = context_build(
            tenant=request_tenant(request),
            user_id=payload.user_id,
            query_vector=vector,
            space=space,
            recent=payload.recent,
            k=payload.k,
            token_budget=budget,
            channel=payload.channel.value if payload.channel else None,
        )
        body = {
            "items": ContextItemSerializer(context.items, many=True).data,
            "tokens": context.tokens,
            "budget": context.budget,
            "truncated": context.truncated,
            "text": context.render(),
        }
        return Response(body)
