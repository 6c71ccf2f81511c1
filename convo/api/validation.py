"""Running pydantic payload models on request data, with errors in the API's field-naming form."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from convo.api.errors import FieldErrors

PayloadT = TypeVar("PayloadT", bound=BaseModel)


def pydantic_field_errors(exc: ValidationError, *, prefix: str = "") -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        path = ".".join(str(part) for part in error["loc"])
        name = f"{prefix}.{path}" if prefix and path else (path or prefix or "body")
        message = error["msg"].removeprefix("Value error, ")
        fields.setdefault(name, []).append(message)
    return fields


def parse_payload(model: type[PayloadT], data: Any, *, prefix: str = "") -> PayloadT:
    """Validate ``data`` as ``model`` or raise a 400 naming each bad field (dotted, under ``prefix``)."""
    if not isinstance(data, dict):
        raise FieldErrors({prefix or "body": ["Expected a JSON object."]})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise FieldErrors(pydantic_field_errors(exc, prefix=prefix)) from None


def parse_item(model: type[PayloadT], data: Any, *, prefix: str) -> PayloadT | dict[str, list[str]]:
    """Like ``parse_payload`` for one item of a batch: returns the errors instead of raising."""
    if not isinstance(data, dict):
        return {prefix: ["Expected a JSON object."]}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        return pydantic_field_errors(exc, prefix=prefix)


def batch_items(data: Any, *, field: str, limit: int) -> list[Any]:
    """The list under ``field`` of a batch envelope, refused when it is missing, empty or too long."""
    if not isinstance(data, dict):
        raise FieldErrors({"body": ["Expected a JSON object."]})
    items = data.get(field)
    if not isinstance(items, list):
        raise FieldErrors({field: ["Expected a list."]})
    if not items:
        raise FieldErrors({field: ["Expected at least one item."]})
    if len(items) > limit:
        raise FieldErrors(
            {field: [f"Ensure this list has at most {limit} items (got {len(items)})."]}, code="batch_too_large"
        )
    extra = sorted(set(data) - {field})
    if extra:
        raise FieldErrors({name: ["Unknown field."] for name in extra})
    return items
