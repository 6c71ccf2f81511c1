"""OPTIONS on every API path answers the view's description, never a server error (found by
schemathesis: DRF's default metadata introspected serializers that the pydantic-validated
endpoints do not have)."""

from __future__ import annotations

import re
from uuid import uuid4

import pytest
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient


def _api_paths() -> list[str]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return sorted(path for path in schema["paths"] if path.startswith("/api/v1/"))


@pytest.mark.django_db
def test_options_describes_every_api_path(api: APIClient) -> None:
    paths = _api_paths()
    assert len(paths) > 30  # the schema was found, not an empty list

    answers = {path: api.options(re.sub(r"\{[^}]+\}", str(uuid4()), path)) for path in paths}

    staff_only = {path for path in paths if path.startswith("/api/v1/ops/")}
    assert {path: r.status_code for path, r in answers.items() if path in staff_only} == dict.fromkeys(staff_only, 403)
    for path, response in answers.items():
        if path in staff_only:
            continue
        assert response.status_code == 200, (path, response.content)
        body = response.json()
        assert body["name"] and "application/json" in body["parses"], (path, body)
        assert "actions" not in body
