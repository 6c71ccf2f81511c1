"""Answer deliveries under /api/v1/ (docs/delivery.md): the per-message delivery status, pull mode
(list pending, acknowledge), retrying a failed delivery, and the tenant's webhook endpoint.
Each action: parse input, call one service or a tenant-scoped query, serialize."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from clustering.models import AnswerDelivery, DeliveryEndpoint, DeliveryKind, DeliveryStatus
from clustering.services.webhooks import (
    delivery_acknowledge,
    delivery_endpoint_delete,
    delivery_endpoint_set,
    delivery_retry,
)
from conversations.api.views import UUID_PATTERN
from convo.api.errors import FieldErrors
from convo.api.pagination import keyset_page, keyset_page_serializer, page_size_param
from convo.api.tenancy import TenantScopedViewSet, request_tenant
from convo.api.validation import batch_items, parse_payload
from convo.errors import NotFound


# Named components of their own: left to drf-spectacular, a second enum under the property names
# "status" and "kind" would rename the conversations' StatusEnum and KindEnum in the schema.
@extend_schema_field({"type": "string", "enum": DeliveryStatus.values}, component_name="DeliveryStatusEnum")
class DeliveryStatusField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=DeliveryStatus.choices, **kwargs)


@extend_schema_field({"type": "string", "enum": DeliveryKind.values}, component_name="DeliveryKindEnum")
class DeliveryKindField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=DeliveryKind.choices, **kwargs)


class DeliverySerializer(serializers.ModelSerializer):
    """A delivery as the API shows it: the webhook's payload (``id`` is its ``delivery_id``)
    plus where the delivery stands."""

    status = DeliveryStatusField(read_only=True)
    kind = DeliveryKindField(read_only=True)
    message_id = serializers.UUIDField(read_only=True)
    cluster_id = serializers.UUIDField(read_only=True)
    conversation_id = serializers.UUIDField(source="message.conversation_id", read_only=True)
    user_id = serializers.CharField(source="message.conversation.external_user_id", read_only=True)
    channel = serializers.CharField(source="message.conversation.channel", read_only=True)

    class Meta:
        model = AnswerDelivery
        fields = [
            "id",
            "kind",
            "status",
            "message_id",
            "conversation_id",
            "user_id",
            "channel",
            "cluster_id",
            "answer",
            "answer_version",
            "attempts",
            "next_attempt_at",
            "last_error",
            "delivered_at",
            "created_at",
        ]
        read_only_fields = fields


# Oldest first. The full key, not ``created_at`` alone: every delivery of one fan-out shares its
# transaction's ``created_at``, and the (unique) id breaks those ties (convo.api.pagination).
DELIVERY_ORDERING: tuple[str, ...] = ("created_at", "id")


class DeliveryFilterSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=DeliveryStatus.choices, required=False)
    kind = serializers.ChoiceField(choices=DeliveryKind.choices, required=False)
    cluster_id = serializers.UUIDField(required=False)
    message_id = serializers.UUIDField(required=False)
    page_size = serializers.IntegerField(required=False, help_text="Items per page (1 to CONVO_MAX_PAGE_SIZE).")
    cursor = serializers.CharField(required=False, help_text="The `next` or `previous` cursor of another page.")

    def to_filters(self) -> dict[str, Any]:
        return {name: value for name, value in self.validated_data.items() if name not in {"page_size", "cursor"}}


PaginatedDeliveryListSerializer = keyset_page_serializer(DeliverySerializer, "PaginatedDeliveryListSerializer")


class DeliveryAckIn(BaseModel):
    """Documents the request shape; the ids are checked one by one so each error names its index."""

    ids: list[UUID] = Field(description="Delivery ids your chat backend has received (at most DELIVERY_MAX_ACK_IDS).")


class DeliveryAckSerializer(serializers.Serializer):
    acknowledged = serializers.IntegerField(
        help_text="Deliveries marked delivered by this request. Ids already delivered, unknown, or of "
        "another tenant are ignored, so repeating a request is harmless."
    )


class DeliveryViewSet(TenantScopedViewSet):
    base_queryset = AnswerDelivery.objects.select_related("message__conversation")
    serializer_class = DeliverySerializer
    pagination_class = None  # keyset pages on the full key (``list``)
    lookup_value_regex = UUID_PATTERN

    @extend_schema(
        parameters=[DeliveryFilterSerializer],
        responses={200: PaginatedDeliveryListSerializer, 400: OpenApiTypes.OBJECT},
    )
    def list(self, request: Request) -> Response:
        """Oldest first. Pull mode: list `status=pending`, handle them, then acknowledge them."""
        filters = DeliveryFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        size = page_size_param(request.query_params)
        page = keyset_page(
            self.get_queryset().filter(**filters.to_filters()),
            keys=DELIVERY_ORDERING,
            cursor=filters.validated_data.get("cursor"),
            size=size,
        )
        params = {name: value for name, value in filters.validated_data.items() if name != "cursor"}
        data = DeliverySerializer(page.items, many=True).data
        return Response(page.body(request.build_absolute_uri(request.path), params, data))

    @extend_schema(responses={200: DeliverySerializer, 404: OpenApiTypes.OBJECT})
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(DeliverySerializer(self.get_object()).data)

    @extend_schema(request=DeliveryAckIn, responses={200: DeliveryAckSerializer})
    @action(detail=False, methods=["post"], url_path="ack")
    def ack(self, request: Request) -> Response:
        raw = batch_items(request.data, field="ids", limit=settings.DELIVERY_MAX_ACK_IDS)
        ids: list[UUID] = []
        errors: dict[str, list[str]] = {}
        for index, value in enumerate(raw):
            try:
                ids.append(UUID(value))
            except (TypeError, ValueError, AttributeError):
                errors[f"ids.{index}"] = ["Must be a UUID."]
        if errors:
            raise FieldErrors(errors)
        acknowledged = delivery_acknowledge(tenant=self.tenant, delivery_ids=list(dict.fromkeys(ids)))
        return Response({"acknowledged": acknowledged})

    @extend_schema(
        request=None, responses={200: DeliverySerializer, 404: OpenApiTypes.OBJECT, 409: OpenApiTypes.OBJECT}
    )
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str) -> Response:
        """Send a failed delivery again (409 when it is not failed, or its answer was superseded)."""
        return Response(DeliverySerializer(delivery_retry(delivery=self.get_object())).data)


class DeliveryEndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: StrictStr = Field(max_length=2048, description="An http:// or https:// URL your chat backend listens on.")
    is_active: StrictBool = Field(default=True, description="False pauses the webhook (deliveries wait, pullable).")
    rotate_secret: StrictBool = Field(default=False, description="Make a new signing secret (returned once).")


class DeliveryEndpointSerializer(serializers.Serializer):
    url = serializers.URLField()
    is_active = serializers.BooleanField()
    created_at = serializers.DateTimeField()


class DeliveryEndpointSecretSerializer(DeliveryEndpointSerializer):
    secret = serializers.CharField(
        required=False, help_text="The signing secret: present only when it was just created or rotated."
    )


class DeliveryEndpointView(APIView):
    """The tenant's webhook endpoint. With none (or a paused one) the tenant pulls its deliveries."""

    @extend_schema(responses={200: DeliveryEndpointSerializer, 404: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        endpoint = DeliveryEndpoint.objects.filter(tenant=request_tenant(request)).first()
        if endpoint is None:
            raise NotFound("This tenant has no webhook endpoint: it pulls its deliveries.")
        return Response(DeliveryEndpointSerializer(endpoint).data)

    @extend_schema(
        request=DeliveryEndpointIn,
        responses={200: DeliveryEndpointSecretSerializer, 201: DeliveryEndpointSecretSerializer},
        description="Create (201, with the new `secret`) or replace (200) the webhook endpoint. The secret is "
        "shown only when created or rotated (`rotate_secret: true`); store it to verify `Convo-Signature`.",
    )
    def put(self, request: Request) -> Response:
        payload = parse_payload(DeliveryEndpointIn, request.data)
        change = delivery_endpoint_set(
            tenant=request_tenant(request),
            url=payload.url,
            is_active=payload.is_active,
            rotate_secret=payload.rotate_secret,
        )
        body = dict(DeliveryEndpointSerializer(change.endpoint).data)
        if change.secret is not None:
            body["secret"] = change.secret
        return Response(body, status=status.HTTP_201_CREATED if change.created else status.HTTP_200_OK)

    @extend_schema(responses={204: None})
    def delete(self, request: Request) -> Response:
        """Idempotent: 204 whether or not there was an endpoint. The tenant pulls from then on."""
        delivery_endpoint_delete(tenant=request_tenant(request))
        return Response(status=status.HTTP_204_NO_CONTENT)
