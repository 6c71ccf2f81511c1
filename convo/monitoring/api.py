"""``GET /api/v1/ops/stats`` and ``GET /api/v1/ops/alerts``: staff and the ops token only
(``convo/monitoring/auth.py``). Thin: read the selectors, serialize."""

from __future__ import annotations

import logging

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from conversations.api.authentication import TenantApiKeyAuthentication
from convo.monitoring import serializers as out
from convo.monitoring.auth import IsStaff, OpsTokenAuthentication
from convo.monitoring.models import Alert
from convo.monitoring.stats import cache_stats, pool_stats, queue_stats, storage_stats
from convo.monitoring.timing_stores import timing_store_default
from convo.monitoring.timings import TimingStats, timing_stats

logger = logging.getLogger(__name__)

ERRORS = {401: OpenApiTypes.OBJECT, 403: OpenApiTypes.OBJECT}


class OpsView(APIView):
    # A tenant's key authenticates, so a tenant is told 403 (not staff), not 401.
    authentication_classes = [OpsTokenAuthentication, SessionAuthentication, TenantApiKeyAuthentication]
    permission_classes = [IsStaff]


class OpsStatsView(OpsView):
    @extend_schema(
        responses={200: out.OpsStatsSerializer, **ERRORS},
        description="Timings (p50/p95/p99 per operation, window and outcome, every process), the "
        "embedding queue, the embedding-cache hit rate, this process's connection pool and the size "
        "of convo's tables. Across all tenants: staff session or `Bearer <OPS_TOKEN>` only.",
    )
    def get(self, request: Request) -> Response:
        tables, indexes = storage_stats()
        timings: list[TimingStats] = []
        timings_error: str | None = None
        try:
            timings = timing_stats()
        except Exception as exc:  # a store that is down must not take the other figures with it
            logger.warning("ops stats: the timings cannot be read: %s", exc)
            timings_error = f"{type(exc).__name__}: {exc}"[:500]
        body = {
            "generated_at": timezone.now(),
            "timings_store": timing_store_default().name,
            "timings_error": timings_error,
            "timings": timings,
            "queue": queue_stats(),
            "embedding_cache": [cache_stats(days=1), cache_stats(days=7)],
            "connection_pool": pool_stats(),
            "storage": {"tables": tables, "indexes": indexes},
        }
        return Response(out.OpsStatsSerializer(body).data)


class OpsAlertsView(OpsView):
    @extend_schema(
        parameters=[out.AlertFilterSerializer],
        responses={200: out.AlertSerializer(many=True), 400: OpenApiTypes.OBJECT, **ERRORS},
        description="Alert episodes, newest first: `state=open` for those still firing.",
    )
    def get(self, request: Request) -> Response:
        filters = out.AlertFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        alerts = Alert.objects.all()
        state = filters.validated_data["state"]
        if state != "all":
            alerts = alerts.filter(resolved_at__isnull=state == "open")
        return Response(out.AlertSerializer(alerts[: filters.validated_data["limit"]], many=True).data)
