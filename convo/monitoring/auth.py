"""Who may read the ops endpoints: staff (a Django admin session) and tools holding ``OPS_TOKEN``.

The figures are across all tenants, so a tenant's API key is refused (403): it authenticates, and
then is not staff."""

from __future__ import annotations

import hmac
from typing import Any

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import BasePermission
from rest_framework.request import Request


class OpsPrincipal:
    """``request.user`` of a request carrying the ops token."""

    is_authenticated = True
    is_anonymous = False
    is_staff = True
    is_active = True

    def __str__(self) -> str:
        return "ops-token"


def bearer_token(header: bytes) -> str | None:
    scheme, _, value = header.decode("latin-1").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


class OpsTokenAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[OpsPrincipal, None] | None:
        token = bearer_token(get_authorization_header(request))
        if token is None:
            return None
        expected: str = settings.OPS_TOKEN
        if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
            raise AuthenticationFailed("Invalid ops token.")
        return OpsPrincipal(), None

    def authenticate_header(self, request: Request) -> str:
        return "Bearer"  # makes DRF answer 401 (with WWW-Authenticate), not 403


class IsStaff(BasePermission):
    message = "Staff or the ops token only: these figures cover every tenant."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(getattr(user, "is_staff", False) and getattr(user, "is_active", False))


class OpsTokenScheme(OpenApiAuthenticationExtension):
    target_class = "convo.monitoring.auth.OpsTokenAuthentication"
    name = "OpsToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "`Bearer <OPS_TOKEN>`"}
