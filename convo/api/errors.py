"""Every API error is JSON of one shape, and names the field it is about:

    {"error": {"code": "invalid", "message": "…", "fields": {"messages.0.text": ["…"]}}}

``fields`` is present when the error is about particular input fields.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from convo.errors import Overloaded, ServiceError


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"
    default_detail = "The request body is too large."


class FieldErrors(exceptions.ValidationError):
    """A 400 whose detail is already a flat ``{"dotted.field": [messages]}`` mapping."""

    def __init__(self, fields: dict[str, list[str]], *, code: str = "invalid") -> None:
        super().__init__(fields, code=code)
        self.fields = fields
        self.error_code = code


def flatten_field_errors(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF nests errors by field, list index and sub-field; clients want one dotted path each."""
    flat: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = "body" if key == "non_field_errors" and not prefix else str(key)
            flat.update(flatten_field_errors(value, f"{prefix}.{name}" if prefix else name))
    elif isinstance(detail, list) and detail and all(isinstance(item, str) for item in detail):
        flat[prefix or "body"] = [str(item) for item in detail]
    elif isinstance(detail, list):
        for index, value in enumerate(detail):
            if value:
                flat.update(flatten_field_errors(value, f"{prefix}.{index}" if prefix else str(index)))
    else:
        flat[prefix or "body"] = [str(detail)]
    return flat


def error_body(code: str, message: str, fields: dict[str, list[str]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return {"error": error}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ServiceError):
        service_response = Response(error_body(exc.code, exc.message, exc.fields), status=exc.http_status)
        if isinstance(exc, Overloaded):
            service_response["Retry-After"] = str(exc.retry_after)
        return service_response
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response  # an unexpected error: Django's 500 handler answers (JSON under /api/)

    if isinstance(exc, FieldErrors):
        body = error_body(exc.error_code, "The request has invalid fields.", exc.fields)
    elif isinstance(exc, exceptions.ValidationError):
        body = error_body("invalid", "The request has invalid fields.", flatten_field_errors(exc.detail))
    elif isinstance(exc, exceptions.ParseError):
        body = error_body("parse_error", str(exc.detail), {"body": [str(exc.detail)]})
    else:
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else exc.default_code
        body = error_body(str(code), str(exc.detail))
    response.data = body
    return response


@csrf_exempt  # it changes nothing; without this an unknown path POSTed to answered an HTML 403
def json_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("not_found", "Not found."), status=404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception or Http404())


def json_server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("server_error", "Internal server error."), status=500)
    from django.views.defaults import server_error

    return server_error(request)
