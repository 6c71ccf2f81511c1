"""``Authorization: Api-Key <key>``: the request acts as the key's tenant."""

from __future__ import annotations

from typing import Any

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from conversations.selectors import tenant_for_api_key
from convo.api.principal import TenantPrincipal

KEYWORD = "Api-Key"


class TenantApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[TenantPrincipal, str] | None:
        header = get_authorization_header(request).decode("latin-1")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != KEYWORD.lower():
            return None
        key = key.strip()
        found = tenant_for_api_key(key=key) if key else None
        if found is None:
            raise AuthenticationFailed("Invalid, revoked or expired API key.")
        tenant, key_id = found
        return TenantPrincipal(tenant, key_id), key_id

    def authenticate_header(self, request: Request) -> str:
        return KEYWORD  # makes DRF answer 401 (with WWW-Authenticate), not 403


class IsTenant(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, TenantPrincipal)
