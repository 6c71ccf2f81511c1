"""Fixtures shared by the whole suite. Tests run against the embedded PostgreSQL + pgvector
(or DATABASE_URL), never a mock; the embedded server is stopped at the end if this run started it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from conversations.models import Tenant
from conversations.selectors import api_key_cache_clear
from conversations.services.admission import admission_cache_clear
from conversations.services.tenants import tenant_api_key_create
from tests.factories import TenantFactory


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from convo import embedded_db

    started = getattr(embedded_db, "STARTED_BY_THIS_PROCESS", False)
    if started and not os.environ.get("CONVO_KEEP_EMBEDDED_DB"):
        from django.db import connections

        connections.close_all()
        if not _other_clients_connected():  # another test run still uses the server
            embedded_db.embedded_server_stop(data_dir=settings.CONVO_DATA_DIR)


def _other_clients_connected() -> bool:
    import psycopg

    db = settings.DATABASES["default"]
    with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname="postgres") as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchone()
    return bool(row and row[0])


@pytest.fixture(autouse=True)
def _fresh_process_caches() -> Iterator[None]:
    """Process-local caches (API keys, backlog count, embedding spaces, cluster matrices) must not
    leak between tests: a flushed database would leave them pointing at rows that no longer exist."""
    from clustering.services.matrix import cluster_matrices_clear
    from conversations.services.embedding_spaces import embedding_spaces_forget

    clears = (api_key_cache_clear, admission_cache_clear, embedding_spaces_forget, cluster_matrices_clear)
    for clear in clears:
        clear()
    yield
    for clear in clears:
        clear()


@pytest.fixture
def tenant(db: Any) -> Tenant:
    return TenantFactory()


@pytest.fixture
def other_tenant(db: Any) -> Tenant:
    return TenantFactory()


def client_for(tenant: Tenant) -> APIClient:
    _, key = tenant_api_key_create(tenant=tenant, name="tests")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    return client


@pytest.fixture
def api(tenant: Tenant) -> APIClient:
    """An API client authenticated as ``tenant``."""
    return client_for(tenant)


@pytest.fixture
def other_api(other_tenant: Tenant) -> APIClient:
    """An API client authenticated as ``other_tenant``."""
    return client_for(other_tenant)


@pytest.fixture
def redis_url() -> str:
    """The Redis to test against. Without REDIS_URL a test that needs Redis is skipped locally,
    but fails under CI=true: there it must run."""
    url = os.environ.get("REDIS_URL", "")
    if not url:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("REDIS_URL must be set when CI=true: Redis tests may not be skipped in CI")
        pytest.skip("REDIS_URL is not set")
    return url
