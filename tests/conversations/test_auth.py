"""API keys: hashed at rest, `Authorization: Api-Key …`, revocation and inactive tenants."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from conversations.models import TenantAPIKey
from conversations.selectors import api_key_cache_clear
from conversations.services.tenants import tenant_api_key_create, tenant_api_key_revoke

pytestmark = pytest.mark.django_db


def client(key: str | None) -> APIClient:
    api = APIClient()
    if key is not None:
        api.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    return api


def test_keys_are_stored_hashed(tenant):
    api_key, plain = tenant_api_key_create(tenant=tenant, name="k")
    stored = TenantAPIKey.objects.get(pk=api_key.pk)
    assert plain not in stored.hashed_key
    assert plain.split(".")[1] not in stored.id
    assert stored.hashed_key.startswith("sha512$$")


@pytest.mark.parametrize("key", [None, "", "nope", "abcdefgh.wrongsecretwrongsecretwrongsecret"])
def test_missing_or_wrong_keys_are_401_json(tenant, key):
    tenant_api_key_create(tenant=tenant, name="k")
    response = client(key).get("/api/v1/conversations")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Api-Key"
    assert "error" in response.json()


def test_a_valid_key_acts_as_its_tenant(tenant):
    _, plain = tenant_api_key_create(tenant=tenant, name="k")
    assert client(plain).get("/api/v1/conversations").status_code == 200


def test_revoked_keys_and_inactive_tenants_are_refused(tenant):
    api_key, plain = tenant_api_key_create(tenant=tenant, name="k")
    tenant_api_key_revoke(api_key=api_key)
    assert client(plain).get("/api/v1/conversations").status_code == 401

    _, fresh = tenant_api_key_create(tenant=tenant, name="k2")
    tenant.is_active = False
    tenant.save(update_fields=["is_active"])
    api_key_cache_clear()
    assert client(fresh).get("/api/v1/conversations").status_code == 401


def test_a_chosen_key_must_have_the_library_format(tenant):
    with pytest.raises(ValueError, match="prefix"):
        tenant_api_key_create(tenant=tenant, name="k", key="short")
    _, plain = tenant_api_key_create(tenant=tenant, name="k", key="demo1234." + "s" * 32)
    assert client(plain).get("/api/v1/conversations").status_code == 200


def test_unknown_api_paths_are_json_404(api):
    response = api.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert api.get("/api/v1/conversations/not-a-uuid").status_code == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_unknown_api_paths_are_json_404_for_writes_too(db, method):
    # CSRF checks on, as for any client that is not Django's test client: an unknown path must not
    # answer the CSRF middleware's HTML 403 (found by schemathesis).
    from django.test import Client

    response = Client(enforce_csrf_checks=True).generic(method, "/api/v1/conversations/%C2%84", b"{}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
