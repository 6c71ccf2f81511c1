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


def _resolve(schema: dict, node: dict) -> dict:
    ref = node.get("$ref")
    return schema["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else node


def test_every_list_answers_one_page_object_as_served(client, api):
    # drf-spectacular describes a list action's answer as an array of its serializer unless told
    # otherwise; a keyset page serializer must stay one object (found by schemathesis).
    schema = yaml.safe_load(client.get("/api/schema/").content)
    lists = 0
    for path, operations in schema["paths"].items():
        answer = operations.get("get", {}).get("responses", {}).get("200", {})
        body = answer.get("content", {}).get("application/json", {}).get("schema")
        if not path.startswith("/api/v1/") or body is None:
            continue
        assert _resolve(schema, body).get("type") != "array" or "results" not in _resolve(
            schema, _resolve(schema, body).get("items", {})
        ).get("properties", {}), path
        if "results" in _resolve(schema, body).get("properties", {}):
            lists += 1
    assert lists >= 10
    # and the pages served are objects with results
    assert set(api.get("/api/v1/feedback").json()) == {"next", "previous", "results"}


def test_urls_that_may_be_empty_are_not_documented_as_uris(client):
    components = yaml.safe_load(client.get("/api/schema/").content)["components"]["schemas"]
    assert "format" not in components["Message"]["properties"]["sender_avatar_url"]
    assert "format" not in components["Transcript"]["properties"]["audio_url"]


ERROR_REF = {"$ref": "#/components/schemas/Error"}


def test_every_error_answer_is_documented_with_the_error_shape(client, api):
    schema = yaml.safe_load(client.get("/api/schema/").content)
    error = schema["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    create = schema["paths"]["/api/v1/conversations"]["post"]["responses"]
    assert {"400", "401", "409", "413", "503"} <= set(create)
    assert "404" in schema["paths"]["/api/v1/conversations/{id}"]["get"]["responses"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                if path.startswith("/api/v1/") and code.startswith(("4", "5")):
                    body = response["content"]["application/json"]["schema"]
                    assert ERROR_REF in (body, *body.get("oneOf", [])), (method, path, code)
                    assert response["description"], (method, path, code)
    # A batch's 400 is its per-item results, or the Error shape for a body that is not one.
    batch_400 = schema["paths"]["/api/v1/conversations/batch"]["post"]["responses"]["400"]
    assert batch_400["content"]["application/json"]["schema"]["oneOf"][0] == {
        "$ref": "#/components/schemas/BatchResult"
    }
    # What is served has that shape: an unauthenticated call, a bad body, an unknown id.
    for response in (
        client.get("/api/v1/conversations"),
        api.post("/api/v1/conversations", {"user_id": ""}, format="json"),
        api.get("/api/v1/conversations/01a22d60-8ce8-71d6-96a1-b5079bc2214f"),
    ):
        body = response.json()
        assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body


def test_a_null_raw_payload_is_documented(client):
    # DRF's JSONField is described as oneOf [{}, null], which a null matches twice.
    components = yaml.safe_load(client.get("/api/schema/").content)["components"]["schemas"]
    assert components["Message"]["properties"]["raw_payload"]["type"] == ["object", "null"]
