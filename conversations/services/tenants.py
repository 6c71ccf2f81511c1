"""Tenants and their API keys."""

from __future__ import annotations

from typing import cast

from django.db import transaction
from rest_framework_api_key.crypto import KeyGenerator

from conversations.models import Tenant, TenantAPIKey


@transaction.atomic
def tenant_create(*, name: str, slug: str) -> Tenant:
    tenant = Tenant(name=name, slug=slug)
    tenant.full_clean()
    tenant.save()
    return tenant


@transaction.atomic
def tenant_update(*, tenant: Tenant, name: str, is_active: bool) -> Tenant:
    """Rename or (de)activate a tenant. The slug never changes: it names the tenant in logs."""
    tenant.name, tenant.is_active = name, is_active
    tenant.full_clean()
    tenant.save(update_fields=["name", "is_active"])
    return tenant


@transaction.atomic
def tenant_api_key_create(*, tenant: Tenant, name: str, key: str | None = None) -> tuple[TenantAPIKey, str]:
    """Make an API key for ``tenant`` and return it with the plain key, which is never stored.

    ``key`` lets an operator choose the key (for example from an environment variable); it must
    have the library's ``<prefix>.<secret>`` form with an 8-character prefix.
    """
    if key is None:
        created, plain = TenantAPIKey.objects.create_key(tenant=tenant, name=name)
        return cast(TenantAPIKey, created), plain
    prefix, dot, secret = key.partition(".")
    if not dot or len(prefix) != 8 or len(secret) < 32:
        raise ValueError("an API key must look like <8-character prefix>.<at least 32 characters>")
    hashed = KeyGenerator().hash(key)
    api_key = TenantAPIKey(tenant=tenant, name=name, prefix=prefix, hashed_key=hashed, id=f"{prefix}.{hashed}")
    api_key.save()
    return api_key, key


@transaction.atomic
def tenant_api_key_revoke(*, api_key: TenantAPIKey) -> None:
    api_key.revoked = True
    api_key.save(update_fields=["revoked"])
