"""Keyset (cursor) pagination: stable under concurrent inserts, and no COUNT over big tables."""

from __future__ import annotations

from django.conf import settings
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request

from convo.api.errors import FieldErrors


class NewestFirstCursorPagination(CursorPagination):
    ordering = ("-created_at", "-id")
    page_size_query_param = "page_size"

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        maximum: int = settings.CONVO_MAX_PAGE_SIZE
        if raw is None:
            return int(settings.CONVO_DEFAULT_PAGE_SIZE)
        if not (raw.isascii() and raw.isdecimal()) or int(raw) < 1:
            raise FieldErrors({"page_size": ["A positive integer is required."]})
        if int(raw) > maximum:
            raise FieldErrors({"page_size": [f"Ensure this value is less than or equal to {maximum}."]})
        return int(raw)


class OldestFirstCursorPagination(NewestFirstCursorPagination):
    ordering = ("created_at", "id")
