"""A JSON parser that refuses oversized bodies before reading them whole, and parses with orjson."""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

import orjson
from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser

from convo.api.errors import PayloadTooLarge


class BoundedJSONParser(BaseParser):
    media_type = "application/json"

    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        limit: int = settings.CONVO_MAX_BODY_BYTES
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        if declared and declared.isascii() and declared.isdecimal() and int(declared) > limit:
            raise PayloadTooLarge(f"The request body is {declared} bytes; the limit is {limit} bytes.")
        # Read one byte past the limit so a body without an honest Content-Length is caught too.
        body = stream.read(limit + 1)
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ParseError(f"The body is not valid JSON: {exc}") from exc
