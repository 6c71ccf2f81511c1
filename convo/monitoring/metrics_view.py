"""``GET /metrics``: the Prometheus text format, behind ``METRICS_ENABLED`` (404 when off) and
then a bearer token (``METRICS_TOKEN``) or an allowed client address (``METRICS_ALLOWED_IPS``).
No bearer header from a client not allowed by address: 401; a wrong token: 403."""

from __future__ import annotations

import hmac
import ipaddress
import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from convo.api.errors import error_body
from convo.monitoring.auth import bearer_token
from convo.monitoring.prometheus import metrics_registry

logger = logging.getLogger(__name__)


def _address_allowed(address: str, allowed: list[str]) -> bool:
    try:
        client = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in allowed:
        try:
            if client in ipaddress.ip_network(entry.strip(), strict=False):
                return True
        except ValueError:
            logger.warning("METRICS_ALLOWED_IPS entry %r is not an address or network", entry)
    return False


def metrics_access(request: HttpRequest) -> int:
    """The HTTP status refusing this scrape, or 200 when it may read the metrics."""
    if not settings.METRICS_ENABLED:
        return 404
    header = request.headers.get("Authorization", "")
    token = bearer_token(header.encode("latin-1", "replace")) if header else None
    if token is not None:
        expected: str = settings.METRICS_TOKEN
        return 200 if expected and hmac.compare_digest(token.encode(), expected.encode()) else 403
    if _address_allowed(request.META.get("REMOTE_ADDR", ""), settings.METRICS_ALLOWED_IPS):
        return 200
    return 401


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    status = metrics_access(request)
    if status == 404:
        return JsonResponse(error_body("not_found", "Not found."), status=404)
    if status == 401:
        response = JsonResponse(error_body("not_authenticated", "Send Authorization: Bearer <token>."), status=401)
        response["WWW-Authenticate"] = "Bearer"
        return response
    if status == 403:
        return JsonResponse(error_body("permission_denied", "Invalid metrics token."), status=403)
    scrape = HttpResponse(generate_latest(metrics_registry()), content_type=CONTENT_TYPE_LATEST)
    scrape["Cache-Control"] = "no-cache"
    return scrape
