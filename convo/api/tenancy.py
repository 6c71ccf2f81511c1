"""Tenant scoping, owned in one place (the idea of PostHog's ``posthog/api/routing.py``).

A tenant-scoped viewset declares ``base_queryset`` and never overrides ``get_queryset``: the base
class filters every queryset by the authenticated tenant, so ``get_object`` answers 404 for another
tenant's id. Defining ``get_queryset`` on a subclass is refused when the class is created.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from django.db.models import Model, QuerySet
from rest_framework.request import Request
from rest_framework.viewsets import GenericViewSet

from convo.api.principal import TenantPrincipal

if TYPE_CHECKING:
    from conversations.models import Tenant


def request_tenant(request: Request) -> Tenant:
    principal = request.user
    if not isinstance(principal, TenantPrincipal):  # IsTenant has already refused such requests
        raise PermissionError("request is not authenticated as a tenant")
    return principal.tenant


class TenantScopedViewSet(GenericViewSet):
    base_queryset: ClassVar[QuerySet[Any] | None] = None
    tenant_field: ClassVar[str] = "tenant"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "get_queryset" in cls.__dict__ or "queryset" in cls.__dict__:
            raise TypeError(
                f"{cls.__name__} must declare base_queryset, not queryset/get_queryset: "
                "TenantScopedViewSet owns tenant filtering."
            )

    @property
    def tenant(self) -> Tenant:
        return request_tenant(self.request)

    def get_queryset(self) -> QuerySet[Model]:
        if self.base_queryset is None:
            raise TypeError(f"{type(self).__name__} declares no base_queryset")
        if getattr(self, "swagger_fake_view", False):  # OpenAPI generation has no tenant
            return self.base_queryset.none()
        return self.base_queryset.all().filter(**{self.tenant_field: self.tenant})
