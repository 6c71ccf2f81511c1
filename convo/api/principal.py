"""The authenticated caller of a tenant API request (kept free of DRF imports: the
authentication class that DRF's settings load imports it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conversations.models import Tenant


class TenantPrincipal:
    """What ``request.user`` is for a request authenticated by a tenant's API key."""

    is_authenticated = True
    is_anonymous = False
    is_staff = False

    def __init__(self, tenant: Tenant, api_key_id: str) -> None:
        self.tenant = tenant
        self.api_key_id = api_key_id

    def __str__(self) -> str:
        return f"tenant:{self.tenant.slug}"
