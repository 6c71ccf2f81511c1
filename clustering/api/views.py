"""The clusters API under /api/v1/: list, detail, members, audit log, and the moderator actions
(answer, relabel, remove a message, merge, split, reopen, archive), plus a message's cluster and
the clustering stats. Each action parses its input, calls one service or selector, serializes.

Tenancy: clusters in the path come from ``TenantScopedViewSet.get_object`` (404 for another
tenant's); ids in a body (merge's clusters, split's and remove's messages) are looked up for the
tenant before any service runs, and answer 404 naming the field when the tenant has no such row.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from clustering.api import serializers as out
from clustering.list_cache import cluster_list_cache_get, cluster_list_cache_key, cluster_list_cache_set
from clustering.models import Cluster, ClusterStatus
from clustering.payloads import (
    ClusterAnswerIn,
    ClusteringStatsQuery,
    ClusterListQuery,
    ClusterMergeIn,
    ClusterRelabelIn,
    ClusterRemoveMessageIn,
    ClusterSplitIn,
    PageQuery,
)
from clustering.selectors import (
    ACTION_ORDERING,
    CLUSTER_ORDERINGS,
    MEMBER_ORDERING,
    cluster_actions,
    cluster_list,
    cluster_members,
    cluster_previews,
    clustering_stats,
    clusters_of_tenant,
    message_cluster,
    message_ids_of_tenant,
)
from clustering.services.moderation import (
    Actor,
    cluster_answer,
    cluster_archive,
    cluster_merge,
    cluster_relabel,
    cluster_remove_message,
    cluster_reopen,
    cluster_split,
)
from conversations.api.views import UUID_PATTERN
from convo.api.pagination import keyset_page
from convo.api.principal import TenantPrincipal
from convo.api.tenancy import TenantScopedViewSet, request_tenant
from convo.api.validation import parse_payload
from convo.db_router import replica_reads
from convo.errors import NotFound

ERRORS = {
    400: OpenApiResponse(OpenApiTypes.OBJECT, description="Invalid input; `error.fields` names each bad field."),
    404: OpenApiResponse(OpenApiTypes.OBJECT, description="No such cluster (or message) for this tenant."),
}
CONFLICT = {409: OpenApiResponse(OpenApiTypes.OBJECT, description="Not allowed in the cluster's status.")}
PAGE_PARAMETERS = [
    OpenApiParameter("page_size", OpenApiTypes.INT, description="Items per page (1 to CONVO_MAX_PAGE_SIZE)."),
    OpenApiParameter("cursor", OpenApiTypes.STR, description="The `next` or `previous` cursor of another page."),
]
LIST_PARAMETERS = [
    OpenApiParameter("status", OpenApiTypes.STR, enum=ClusterStatus.values, description="Only this status."),
    OpenApiParameter(
        "ordering",
        OpenApiTypes.STR,
        enum=list(CLUSTER_ORDERINGS),
        description="`-size` (largest first, the default), `size`, `-last_message_at` (latest message first) "
        "or `last_message_at`.",
    ),
    *PAGE_PARAMETERS,
]


def _actor(request: Request) -> Actor:
    """The audit log names an API caller by its key's public prefix (never the key's hash)."""
    principal = request.user
    if not isinstance(principal, TenantPrincipal):  # IsTenant has already refused such requests
        raise PermissionError("request is not authenticated as a tenant")
    prefix, _, _ = principal.api_key_id.partition(".")
    return Actor(label=f"api-key:{prefix}")


def _query(model: type[Any], request: Request) -> Any:
    return parse_payload(model, request.query_params.dict())


class ClusterViewSet(TenantScopedViewSet):
    """Clusters of look-alike inbound messages, and the moderator's actions on them."""

    base_queryset = Cluster.objects.defer("vector_sum")
    serializer_class = out.ClusterSerializer
    lookup_value_regex = UUID_PATTERN

    @extend_schema(
        parameters=LIST_PARAMETERS,
        responses={200: out.ClusterPageSerializer, 400: ERRORS[400]},
        description="The tenant's clusters, each with its newest members, by keyset pages. Pages are cached for "
        "CLUSTER_LIST_CACHE_SECONDS and dropped at once by any change to the tenant's clusters "
        "(`X-Cache: hit` marks a cached page).",
    )
    @replica_reads()
    def list(self, request: Request) -> Response:
        query: ClusterListQuery = _query(ClusterListQuery, request)
        params = query.model_dump(mode="json", exclude_none=True)
        base_url = request.build_absolute_uri(request.path)
        key = cluster_list_cache_key(tenant_id=self.tenant.pk, request={**params, "url": base_url})
        cached = cluster_list_cache_get(key)
        if cached is not None:
            return Response(cached, headers={"X-Cache": "hit"})
        clusters = cluster_list(tenant=self.tenant, status=query.status, ordering=query.ordering)
        page = keyset_page(clusters, keys=CLUSTER_ORDERINGS[query.ordering], cursor=query.cursor, size=query.page_size)
        previews = cluster_previews(
            tenant=self.tenant,
            cluster_ids=[row["id"] for row in page.items],
            limit=int(settings.CLUSTER_LIST_PREVIEW_MESSAGES),
        )
        rows = [{**row, "recent_messages": previews[row["id"]]} for row in page.items]
        body = page.body(base_url, params, rows)
        cluster_list_cache_set(key, body)
        return Response(body, headers={"X-Cache": "miss"})

    @extend_schema(responses={200: out.ClusterDetailSerializer, 404: ERRORS[404]})
    def retrieve(self, request: Request, pk: str) -> Response:
        cluster = self.get_object()
        limit = int(settings.CLUSTER_DETAIL_MESSAGES)
        members = list(cluster_members(cluster=cluster)[: limit + 1])
        body = {**out.cluster_body(cluster), "messages": members[:limit], "messages_truncated": len(members) > limit}
        return Response(body)

    @extend_schema(request=ClusterRelabelIn, responses={200: out.ClusterSerializer, **ERRORS})
    def partial_update(self, request: Request, pk: str) -> Response:
        payload = parse_payload(ClusterRelabelIn, request.data)
        cluster = cluster_relabel(cluster=self.get_object(), label=payload.label, actor=_actor(request))
        return Response(out.cluster_body(cluster))

    @extend_schema(parameters=PAGE_PARAMETERS, responses={200: out.ClusterMemberPageSerializer, **ERRORS})
    @action(detail=True, methods=["get"])
    def messages(self, request: Request, pk: str) -> Response:
        query: PageQuery = _query(PageQuery, request)
        page = keyset_page(
            cluster_members(cluster=self.get_object()), keys=MEMBER_ORDERING, cursor=query.cursor, size=query.page_size
        )
        return Response(page.body(request.build_absolute_uri(request.path), _page_params(query), page.items))

    @extend_schema(
        parameters=PAGE_PARAMETERS,
        responses={200: out.ClusterActionPageSerializer, **ERRORS},
        description="The cluster's audit log, newest first: who did what, with the cluster before and after.",
    )
    @action(detail=True, methods=["get"])
    def actions(self, request: Request, pk: str) -> Response:
        query: PageQuery = _query(PageQuery, request)
        page = keyset_page(
            cluster_actions(cluster=self.get_object()), keys=ACTION_ORDERING, cursor=query.cursor, size=query.page_size
        )
        data = out.ClusterActionLogSerializer(page.items, many=True).data
        return Response(page.body(request.build_absolute_uri(request.path), _page_params(query), data))

    @extend_schema(
        request=ClusterAnswerIn,
        responses={200: out.ClusterSerializer, **ERRORS, **CONFLICT},
        description="Answer the cluster (or replace its answer): one delivery per member now, and a suggestion "
        "for every look-alike message that joins while it stays answered. 409 when archived.",
    )
    @action(detail=True, methods=["post"])
    def answer(self, request: Request, pk: str) -> Response:
        payload = parse_payload(ClusterAnswerIn, request.data)
        cluster = cluster_answer(cluster=self.get_object(), answer=payload.answer, actor=_actor(request))
        return Response(out.cluster_body(cluster))

    @extend_schema(
        request=ClusterRemoveMessageIn,
        responses={200: out.ClusterMoveSerializer, **ERRORS, **CONFLICT},
        description="Take a member out and re-home it: into the most similar other open or answered cluster "
        "when it passes the tenant's threshold, else into a new cluster. `cluster` is where it went, `source` "
        "this cluster after the move (archived when it was the last member).",
    )
    @action(detail=True, methods=["post"], url_path="remove-message")
    def remove_message(self, request: Request, pk: str) -> Response:
        payload = parse_payload(ClusterRemoveMessageIn, request.data)
        source = self.get_object()
        _require_messages(request, [payload.message_id], field="message_id")
        home = cluster_remove_message(cluster=source, message_id=payload.message_id, actor=_actor(request))
        return Response(_move_body(home, self.get_object()))

    @extend_schema(
        request=ClusterMergeIn,
        responses={200: out.ClusterSerializer, **ERRORS, **CONFLICT},
        description="Merge the listed clusters into this one: their members move here, and they are archived "
        "empty with `merged_into_id` set. 409 when this cluster is archived.",
    )
    @action(detail=True, methods=["post"])
    def merge(self, request: Request, pk: str) -> Response:
        payload = parse_payload(ClusterMergeIn, request.data)
        target = self.get_object()
        found = clusters_of_tenant(tenant=self.tenant, cluster_ids=payload.cluster_ids)
        missing = [str(pk) for pk in dict.fromkeys(payload.cluster_ids) if pk not in found]
        if missing:
            raise NotFound(
                "Cluster not found.", fields={"cluster_ids": [f"No such cluster: {', '.join(missing[:10])}."]}
            )
        cluster = cluster_merge(target=target, sources=list(found.values()), actor=_actor(request))
        return Response(out.cluster_body(cluster))

    @extend_schema(
        request=ClusterSplitIn,
        responses={200: out.ClusterMoveSerializer, **ERRORS},
        description="Move the chosen members into a new open cluster (`cluster`); `source` is this cluster "
        "after the split, which must keep at least one member.",
    )
    @action(detail=True, methods=["post"])
    def split(self, request: Request, pk: str) -> Response:
        payload = parse_payload(ClusterSplitIn, request.data)
        source = self.get_object()
        _require_messages(request, payload.message_ids, field="message_ids")
        new = cluster_split(cluster=source, message_ids=payload.message_ids, label=payload.label, actor=_actor(request))
        return Response(_move_body(new, self.get_object()))

    @extend_schema(
        request=None,
        responses={200: out.ClusterSerializer, 404: ERRORS[404], **CONFLICT},
        description="Back to open: look-alikes join it again, without the answer (which is kept). 409 for a "
        "cluster merged into another or an emptied one.",
    )
    @action(detail=True, methods=["post"])
    def reopen(self, request: Request, pk: str) -> Response:
        return Response(out.cluster_body(cluster_reopen(cluster=self.get_object(), actor=_actor(request))))

    @extend_schema(
        request=None,
        responses={200: out.ClusterSerializer, 404: ERRORS[404]},
        description="Archive: it keeps its members, takes no new ones, and leaves the open and answered lists.",
    )
    @action(detail=True, methods=["post"])
    def archive(self, request: Request, pk: str) -> Response:
        return Response(out.cluster_body(cluster_archive(cluster=self.get_object(), actor=_actor(request))))

    @extend_schema(
        parameters=[OpenApiParameter("days", OpenApiTypes.INT, description="The window, 1 to 3650 (default 30).")],
        responses={200: out.ClusteringStatsSerializer, 400: ERRORS[400]},
        description="Clusters by status, and over the last `days` days: messages clustered, those that started a "
        "cluster, those that joined an answered cluster (answer reuse), and the hit rate.",
    )
    @action(detail=False, methods=["get"])
    def stats(self, request: Request) -> Response:
        query: ClusteringStatsQuery = _query(ClusteringStatsQuery, request)
        stats = clustering_stats(tenant=self.tenant, days=query.days)
        return Response(out.ClusteringStatsSerializer(stats).data)


class MessageClusterView(APIView):
    """GET /messages/{id}/cluster: the message's cluster, its suggested answer and its deliveries."""

    @extend_schema(
        parameters=[OpenApiParameter("message_id", OpenApiTypes.UUID, OpenApiParameter.PATH)],
        responses={200: out.MessageClusterSerializer, 404: ERRORS[404]},
        description="`cluster` is null while the message is in no cluster (not embedded yet, or not inbound).",
    )
    def get(self, request: Request, message_id: str) -> Response:
        found = message_cluster(tenant=request_tenant(request), message_id=UUID(message_id))
        if found is None:
            raise NotFound("Message not found.")
        return Response(out.MessageClusterSerializer(found).data)


def _require_messages(request: Request, message_ids: list[UUID], *, field: str) -> None:
    """404 naming ``field`` unless every id is one of the tenant's live messages."""
    known = message_ids_of_tenant(tenant=request_tenant(request), message_ids=message_ids)
    missing = [str(m) for m in dict.fromkeys(message_ids) if m not in known]
    if missing:
        raise NotFound("Message not found.", fields={field: [f"No such message: {', '.join(missing[:10])}."]})


def _move_body(cluster: Cluster, source: Cluster) -> dict[str, Any]:
    return {"cluster": out.cluster_body(cluster), "source": out.cluster_body(source)}


def _page_params(query: PageQuery) -> dict[str, Any]:
    return {"page_size": query.page_size} if "page_size" in query.model_fields_set else {}
