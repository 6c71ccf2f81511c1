"""Ingest and read endpoints under /api/v1/. Each action: parse input, call one service or
selector, serialize. Tenant scoping comes from TenantScopedViewSet."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from conversations.api import serializers as out
from conversations.models import Conversation
from conversations.payloads import (
    ConversationBatchIn,
    ConversationIn,
    ConversationMessagesIn,
    ConversationUpdateIn,
    ConversationUpsertIn,
    InboundMessageBatchIn,
    InboundMessageIn,
    MessageIn,
)
from conversations.selectors import conversation_list, conversation_messages, user_conversation_stats
from conversations.services.conversations import conversation_soft_delete, conversation_update, conversation_upsert
from conversations.services.idempotency import MAX_KEY_LENGTH, idempotent_call, request_fingerprint
from conversations.services.ingest import (
    conversation_create,
    conversation_create_batch,
    conversation_messages_add,
    message_ingest,
    message_ingest_batch,
)
from conversations.services.results import ItemResult
from convo.api.errors import FieldErrors
from convo.api.pagination import NewestFirstCursorPagination, OldestFirstCursorPagination
from convo.api.tenancy import TenantScopedViewSet, request_tenant
from convo.api.validation import batch_items, parse_item, parse_payload
from convo.monitoring.timed_views import TimedViewMixin

UUID_PATTERN = "[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"

IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="Repeat a request with the same key and body to get the same answer; another body answers 409.",
)
BACKPRESSURE = {503: OpenApiTypes.OBJECT}


class IdempotentWritesViewSet(TimedViewMixin, TenantScopedViewSet):
    """A tenant-scoped viewset whose writes run once per ``Idempotency-Key`` (when sent). Its
    ingest actions are timed as ``ingest_ack``, request to response (docs/operations.md)."""

    timing_operation = "ingest_ack"
    timing_actions = frozenset({"create", "batch", "messages"})

    def respond(self, scope: str, build: Callable[[], tuple[int, Any]]) -> Response:
        key = self.request.headers.get("Idempotency-Key")
        if key is None:
            code, body = build()
            return Response(body, status=code)
        key = key.strip()
        if not key or len(key) > MAX_KEY_LENGTH:
            raise FieldErrors({"Idempotency-Key": [f"Must be 1 to {MAX_KEY_LENGTH} characters."]})
        stored = idempotent_call(
            tenant=request_tenant(self.request),
            scope=scope,
            key=key,
            fingerprint=request_fingerprint(scope=scope, data=self.request.data),
            action=build,
        )
        response = Response(stored.body, status=stored.status)
        if stored.replayed:
            response["Idempotent-Replayed"] = "true"
        return response


def _batch_status(body: dict[str, Any]) -> int:
    return status.HTTP_202_ACCEPTED if body["accepted"] else status.HTTP_400_BAD_REQUEST


def _validated_batch(model: type[Any], raw_items: list[Any], field: str) -> tuple[list[Any], list[int], list[Any]]:
    """Parse each item alone; returns (valid payloads, their positions, per-position slots)."""
    slots: list[Any] = [None] * len(raw_items)
    valid: list[Any] = []
    positions: list[int] = []
    for index, raw in enumerate(raw_items):
        parsed = parse_item(model, raw, prefix=f"{field}.{index}")
        if isinstance(parsed, dict):
            slots[index] = parsed
        else:
            valid.append(parsed)
            positions.append(index)
    return valid, positions, slots


def _merge(slots: list[Any], positions: list[int], results: list[ItemResult]) -> list[Any]:
    for position, result in zip(positions, results, strict=True):
        slots[position] = result
    return slots


class ConversationViewSet(IdempotentWritesViewSet):
    base_queryset = Conversation.objects.filter(deleted_at__isnull=True)
    serializer_class = out.ConversationSerializer
    pagination_class = NewestFirstCursorPagination
    lookup_value_regex = UUID_PATTERN

    @extend_schema(parameters=[out.ConversationFilterSerializer], responses=out.ConversationSerializer(many=True))
    def list(self, request: Request) -> Response:
        filters = out.ConversationFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        queryset = conversation_list(tenant=self.tenant, filters=filters.to_filters())
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(out.ConversationSerializer(page, many=True).data)

    @extend_schema(responses=out.ConversationDetailSerializer)
    def retrieve(self, request: Request, pk: str) -> Response:
        conversation = self.get_object()
        limit: int = settings.CONVO_MAX_PAGE_SIZE
        messages = list(conversation_messages(conversation=conversation)[: limit + 1])
        conversation.first_messages = messages[:limit]
        conversation.messages_truncated = len(messages) > limit
        conversation.message_count = (
            len(messages) if len(messages) <= limit else conversation_messages(conversation=conversation).count()
        )
        return Response(out.ConversationDetailSerializer(conversation).data)

    @extend_schema(
        request=ConversationIn,
        parameters=[IDEMPOTENCY_KEY],
        responses={202: out.AcceptedConversationSerializer, 409: OpenApiTypes.OBJECT, **BACKPRESSURE},
    )
    def create(self, request: Request) -> Response:
        payload = parse_payload(ConversationIn, request.data)

        def build() -> tuple[int, Any]:
            result = conversation_create(tenant=self.tenant, payload=payload)
            return status.HTTP_202_ACCEPTED, out.accepted_body(result, kind="conversation")

        return self.respond("conversations.create", build)

    @extend_schema(
        request=ConversationBatchIn,
        parameters=[IDEMPOTENCY_KEY],
        responses={202: out.BatchResultSerializer, 400: out.BatchResultSerializer, **BACKPRESSURE},
        description="Store up to CONVO_MAX_BATCH_ITEMS conversations in one transaction. Each item is "
        "answered on its own: good items are stored even when others are rejected.",
    )
    @action(detail=False, methods=["post"], url_path="batch")
    def batch(self, request: Request) -> Response:
        raw = batch_items(request.data, field="conversations", limit=settings.CONVO_MAX_BATCH_ITEMS)
        valid, positions, slots = _validated_batch(ConversationIn, raw, "conversations")

        def build() -> tuple[int, Any]:
            results = conversation_create_batch(tenant=self.tenant, payloads=valid) if valid else []
            body = out.batch_body(_merge(slots, positions, results), kind="conversation")
            return _batch_status(body), body

        return self.respond("conversations.batch", build)

    @extend_schema(
        request=ConversationUpsertIn,
        responses={200: out.ConversationSerializer, 201: out.ConversationSerializer, 409: OpenApiTypes.OBJECT},
        description="Create the conversation under this id, or replace its writable fields.",
    )
    def update(self, request: Request, pk: str) -> Response:
        payload = parse_payload(ConversationUpsertIn, request.data)
        conversation, created = conversation_upsert(
            tenant=self.tenant, conversation_id=self.kwargs["pk"], payload=payload
        )
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(out.ConversationSerializer(conversation).data, status=code)

    @extend_schema(request=ConversationUpdateIn, responses={200: out.ConversationSerializer, 409: OpenApiTypes.OBJECT})
    def partial_update(self, request: Request, pk: str) -> Response:
        changes = parse_payload(ConversationUpdateIn, request.data)
        conversation = conversation_update(conversation=self.get_object(), changes=changes)
        return Response(out.ConversationSerializer(conversation).data)

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, pk: str) -> Response:
        conversation_soft_delete(conversation=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        methods=["GET"],
        parameters=[
            OpenApiParameter("page_size", OpenApiTypes.INT, description="Items per page."),
            OpenApiParameter("cursor", OpenApiTypes.STR, description="The cursor of the page to fetch."),
        ],
        responses=out.MessageSerializer(many=True),
    )
    @extend_schema(
        methods=["POST"],
        request=ConversationMessagesIn,
        parameters=[IDEMPOTENCY_KEY],
        responses={202: out.BatchResultSerializer, 400: out.BatchResultSerializer, **BACKPRESSURE},
    )
    @action(detail=True, methods=["get", "post"], pagination_class=OldestFirstCursorPagination)
    def messages(self, request: Request, pk: str) -> Response:
        conversation = self.get_object()
        if request.method == "GET":
            page = self.paginate_queryset(conversation_messages(conversation=conversation))
            return self.get_paginated_response(out.MessageSerializer(page, many=True).data)

        raw = batch_items(request.data, field="messages", limit=settings.CONVO_MAX_BATCH_ITEMS)
        valid, positions, slots = _validated_batch(MessageIn, raw, "messages")

        def build() -> tuple[int, Any]:
            results = (
                conversation_messages_add(tenant=self.tenant, conversation_id=conversation.pk, payloads=valid)
                if valid
                else []
            )
            body = out.batch_body(_merge(slots, positions, results), kind="message")
            return _batch_status(body), body

        return self.respond(f"conversations.messages:{conversation.pk}", build)


class MessageViewSet(IdempotentWritesViewSet):
    """Inbound messages (seed 002's IngestMessage)."""

    base_queryset = Conversation.objects.none()

    @extend_schema(
        request=InboundMessageIn,
        parameters=[IDEMPOTENCY_KEY],
        responses={
            202: out.AcceptedMessageSerializer,
            404: OpenApiTypes.OBJECT,
            409: OpenApiTypes.OBJECT,
            **BACKPRESSURE,
        },
    )
    def create(self, request: Request) -> Response:
        payload = parse_payload(InboundMessageIn, request.data)

        def build() -> tuple[int, Any]:
            result = message_ingest(tenant=self.tenant, payload=payload)
            return status.HTTP_202_ACCEPTED, out.accepted_body(result, kind="message")

        return self.respond("messages.create", build)

    @extend_schema(
        request=InboundMessageBatchIn,
        parameters=[IDEMPOTENCY_KEY],
        responses={202: out.BatchResultSerializer, 400: out.BatchResultSerializer, **BACKPRESSURE},
    )
    @action(detail=False, methods=["post"], url_path="batch")
    def batch(self, request: Request) -> Response:
        raw = batch_items(request.data, field="messages", limit=settings.CONVO_MAX_BATCH_ITEMS)
        valid, positions, slots = _validated_batch(InboundMessageIn, raw, "messages")

        def build() -> tuple[int, Any]:
            results = message_ingest_batch(tenant=self.tenant, payloads=valid) if valid else []
            body = out.batch_body(_merge(slots, positions, results), kind="message")
            return _batch_status(body), body

        return self.respond("messages.batch", build)


class UserStatsView(APIView):
    """Seed 001's ``get_conversation_stats`` for one end user of the tenant."""

    @extend_schema(
        parameters=[out.UserStatsQuerySerializer],
        responses=out.UserStatsSerializer,
    )
    def get(self, request: Request, user_id: str) -> Response:
        query = out.UserStatsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        if len(user_id) > 255 or "\x00" in user_id:
            raise FieldErrors({"user_id": ["At most 255 characters, and no NUL characters."]})
        stats = user_conversation_stats(
            tenant=request_tenant(request), user_id=user_id, days=query.validated_data["days"]
        )
        return Response(out.UserStatsSerializer(stats).data)
