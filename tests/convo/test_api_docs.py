"""The OpenAPI schema and its interactive page, served without any outside assets."""

from __future__ import annotations

import pytest
import yaml

pytestmark = pytest.mark.django_db


def test_schema_documents_the_ingest_endpoints_and_auth(client):
    response = client.get("/api/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    assert schema["openapi"].startswith("3.1")
    assert {"/api/v1/conversations", "/api/v1/messages", "/api/v1/messages/batch"} <= set(schema["paths"])
    assert schema["components"]["securitySchemes"]["ApiKeyAuth"]["in"] == "header"
    create = schema["paths"]["/api/v1/conversations"]["post"]
    assert "202" in create["responses"]
    assert "ConversationIn" in str(create["requestBody"])


def test_docs_page_uses_local_assets(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "swagger-ui" in page
    assert "cdn.jsdelivr.net" not in page and "unpkg.com" not in page
