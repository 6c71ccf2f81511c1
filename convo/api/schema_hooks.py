"""drf-spectacular hooks."""

from __future__ import annotations

from typing import Any


def paths_without_trailing_slash(
    endpoints: list[tuple[str, str, str, Any]], **kwargs: Any
) -> list[tuple[str, str, str, Any]]:
    """The routes accept both forms; document the form without the slash, as docs/api.md does."""
    return [(path.rstrip("/") or "/", regex, method, callback) for path, regex, method, callback in endpoints]


# The body of every error answer (convo.api.errors.error_body).
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "Machine-readable: not_found, conflict, overloaded, …"},
                "message": {"type": "string"},
                "fields": {
                    "type": "object",
                    "description": "The fields at fault (dotted paths into the body), each with its messages.",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                },
            },
        }
    },
}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}
# How drf-spectacular writes OpenApiTypes.OBJECT, the type the views give their error answers.
_PLAIN_OBJECT = {"type": "object", "additionalProperties": {}}
# Answers any API operation can give, whatever its own view documents.
_COMMON = {
    "401": "No valid `Authorization: Api-Key …` header (or staff session).",
}
_WITH_BODY = {
    "400": "Invalid input; `error.fields` names each bad field.",
    "413": "The body is larger than CONVO_MAX_BODY_BYTES.",
}
_WITH_PATH_ID = {"404": "Nothing with this id for this tenant."}
# For the error answers a view documented without saying what they mean.
_DESCRIPTIONS = {
    **_COMMON,
    **_WITH_BODY,
    **_WITH_PATH_ID,
    "403": "Not allowed for this credential.",
    "409": "Conflicts with what is stored; `error.fields` names the field.",
    "503": "Overloaded: retry after the `Retry-After` header's seconds.",
}


def error_responses(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Document the error answers of every ``/api/v1/`` operation with one ``Error`` schema.

    Views name their own errors (a 409 here, a 503 there), mostly as plain objects; this gives
    those the shape every error has (an answer a view described in full, such as a batch's
    per-item 400, becomes that or the Error shape). It adds the answers any operation can give:
    401 where a credential is needed, 400 where a body or a query parameter is read, 413 where a
    body is, 404 where the path names an object, 409 where an ``Idempotency-Key`` is taken.
    """
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, operations in result.get("paths", {}).items():
        if not path.startswith("/api/v1/"):
            continue
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for code, description in _possible_errors(path, operation).items():
                responses.setdefault(code, {"description": description})
            for code, response in responses.items():
                if not code.startswith(("4", "5")):
                    continue
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                if schema is None or schema == _PLAIN_OBJECT:
                    schema = _ERROR_REF
                elif schema != _ERROR_REF:
                    schema = {"oneOf": [schema, _ERROR_REF]}  # a bad body still answers the Error shape
                response["content"] = {"application/json": {"schema": schema}}
                if not response.get("description"):
                    response["description"] = _DESCRIPTIONS.get(code, "An error; `error.code` says which.")
    return result


def _possible_errors(path: str, operation: dict[str, Any]) -> dict[str, str]:
    parameters = operation.get("parameters", [])
    possible = dict(_COMMON) if operation.get("security") != [{}] else {}
    if "requestBody" in operation:
        possible.update(_WITH_BODY)
    if any(parameter.get("in") == "query" for parameter in parameters):
        possible["400"] = _WITH_BODY["400"]
    if "{" in path:
        possible.update(_WITH_PATH_ID)
    if any(parameter.get("in") == "header" and parameter.get("name") == "Idempotency-Key" for parameter in parameters):
        possible["409"] = "This Idempotency-Key was used with another body."
    return possible
