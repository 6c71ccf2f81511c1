"""Cursor pagination: stable under concurrent inserts, and no COUNT over big tables.

Two kinds:

- ``keyset_page`` (prefer it): the cursor holds the values of **every** ordering key of the
  last row, the last key unique, so a page is one indexed range read after that exact position
  at any depth, however many rows tie on the leading keys.
- ``NewestFirstCursorPagination`` / ``OldestFirstCursorPagination``: DRF's ``CursorPagination``.
  It positions on the first ordering field alone and skips the rows that tie with it by an
  offset, which DRF caps at 1000: a list where more than ~1000 rows can share the first key
  (rows made by one transaction share ``created_at = now()``) never reaches its end. Use it only
  where such ties cannot pile up.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import F, Model, OrderBy, Q, QuerySet
from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request

from convo.api.errors import FieldErrors


def page_size_param(params: Mapping[str, Any], *, name: str = "page_size") -> int:
    """The ``page_size`` query parameter: ``CONVO_DEFAULT_PAGE_SIZE`` when absent, else a
    positive integer of at most ``CONVO_MAX_PAGE_SIZE`` (a 400 naming the parameter otherwise)."""
    raw = params.get(name)
    maximum: int = settings.CONVO_MAX_PAGE_SIZE
    if raw is None:
        return int(settings.CONVO_DEFAULT_PAGE_SIZE)
    raw = str(raw)
    if not (raw.isascii() and raw.isdecimal()) or int(raw) < 1:
        raise FieldErrors({name: ["A positive integer is required."]})
    if int(raw) > maximum:
        raise FieldErrors({name: [f"Ensure this value is less than or equal to {maximum}."]})
    return int(raw)


class NewestFirstCursorPagination(CursorPagination):
    ordering = ("-created_at", "-id")
    page_size_query_param = "page_size"

    def get_page_size(self, request: Request) -> int:
        return page_size_param(request.query_params, name=self.page_size_query_param)

    def decode_cursor(self, request: Request) -> Cursor | None:
        """DRF answers a cursor that does not decode with a 404; like a keyset page's, it is a 400
        naming ``cursor``."""
        try:
            return super().decode_cursor(request)
        except NotFound:
            raise FieldErrors({self.cursor_query_param: ["Invalid cursor."]}) from None


class OldestFirstCursorPagination(NewestFirstCursorPagination):
    ordering = ("created_at", "id")


# --- keyset pages ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeysetPage:
    """One page of ``keyset_page``: its rows (model instances or ``values()`` dicts, as the
    queryset gives them) and the cursors of the pages after and before it (None at either end)."""

    items: list[Any]
    next_cursor: str | None
    previous_cursor: str | None

    def body(self, base_url: str, params: dict[str, Any], results: Any) -> dict[str, Any]:
        """``{next, previous, results}``, the API's page shape, with links that carry ``params``
        (pass only the validated query parameters, never the raw query string) and the cursor."""

        def link(cursor: str | None) -> str | None:
            if cursor is None:
                return None
            query = {k: v for k, v in params.items() if k != "cursor"}
            return f"{base_url}?{urlencode({**query, 'cursor': cursor})}"

        return {"next": link(self.next_cursor), "previous": link(self.previous_cursor), "results": results}


def keyset_page(queryset: QuerySet[Any], *, keys: Sequence[str], cursor: str | None, size: int) -> KeysetPage:
    """One page of ``queryset`` in the order of ``keys``, after the cursor's position, or before
    it for a ``previous`` cursor.

    ``keys`` are field names of the queryset's model, ``"-"`` for descending; **the last one must
    be unique** (``"id"``, ``"pk"``), so a cursor (the keys' values at the last row of a page)
    names one position exactly, and rows that tie on the leading keys are neither skipped nor
    repeated, however many there are. Nullable keys sort last (in either direction). The
    queryset's own ordering is replaced. One query for the rows (``size + 1`` of them, to know
    whether there is a next page), plus the queryset's prefetches; index ``keys`` (after the
    queryset's equality filters) to keep each page an index range read.

    A cursor of other keys (another ordering), or one that does not decode, is a 400 naming
    ``cursor``."""
    model = queryset.model
    fields = [_key_field(model, key) for key in keys]
    position, backwards = (None, False) if cursor is None else _decode(cursor, keys, fields)
    queryset = queryset.order_by(*keyset_ordering(model, keys, reverse=backwards))
    if position is not None:
        queryset = queryset.filter(_past(keys, position, fields, backwards=backwards))
    rows = list(queryset[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    if not rows:
        return KeysetPage(rows, next_cursor=None, previous_cursor=None)
    if backwards:
        rows.reverse()
    first = _encode(keys, rows[0], backwards=True, fields=fields)
    last = _encode(keys, rows[-1], backwards=False, fields=fields)
    if backwards:  # came back from a later page: there is always a next one
        return KeysetPage(rows, next_cursor=last, previous_cursor=first if more else None)
    return KeysetPage(rows, next_cursor=last if more else None, previous_cursor=first if cursor else None)


def keyset_ordering(model: type[Model], keys: Sequence[str], *, reverse: bool = False) -> list[OrderBy]:
    """``order_by`` arguments for ``keys`` as ``keyset_page`` orders them: nullable keys last
    (first when ``reverse``, which walks the same order backwards)."""
    expressions = []
    for key, field in zip(keys, (_key_field(model, key) for key in keys), strict=True):
        name = key.lstrip("-")
        descending = key.startswith("-") != reverse
        nulls = {"nulls_first": True} if reverse else {"nulls_last": True}
        expression = F(name).desc if descending else F(name).asc
        expressions.append(expression(**nulls) if getattr(field, "null", False) else expression())
    return expressions


def _key_field(model: type[Model], key: str) -> Any:
    name = key.lstrip("-")
    return model._meta.pk if name == "pk" else model._meta.get_field(name)


def _encode(keys: Sequence[str], row: Model | dict[str, Any], *, backwards: bool, fields: list[Any]) -> str:
    """A cursor at ``row`` (a model instance, or a ``values()`` row holding the keys' columns)."""
    values = [row[f.attname] if isinstance(row, dict) else getattr(row, f.attname) for f in fields]
    state = {"k": list(keys), "v": values, "b": backwards}
    return base64.urlsafe_b64encode(orjson.dumps(state, default=str)).decode().rstrip("=")


def _decode(cursor: str, keys: Sequence[str], fields: list[Any]) -> tuple[list[Any], bool]:
    invalid = FieldErrors({"cursor": ["Invalid cursor."]})
    try:
        state = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise invalid from None
    if not isinstance(state, dict) or not isinstance(state.get("v"), list) or not isinstance(state.get("b"), bool):
        raise invalid
    if state.get("k") != list(keys):
        raise FieldErrors({"cursor": ["This cursor belongs to another ordering."]})
    if len(state["v"]) != len(keys):
        raise invalid
    try:
        position = [
            None if value is None else field.to_python(value) for field, value in zip(fields, state["v"], strict=True)
        ]
    except (DjangoValidationError, TypeError, ValueError):
        raise invalid from None
    if any(value is None and not field.null for field, value in zip(fields, position, strict=True)):
        raise invalid
    return position, state["b"]


def _past(keys: Sequence[str], position: list[Any], fields: list[Any], *, backwards: bool) -> Q:
    """Rows strictly after ``position`` in the keys' order (strictly before it when
    ``backwards``), nulls last: (k1 past v1) or (k1 = v1 and k2 past v2) or …"""
    nothing = Q(pk__in=[])
    condition, equal = nothing, Q()
    for key, value, field in zip(keys, position, fields, strict=True):
        name = key.lstrip("-")
        descending = key.startswith("-") != backwards
        if value is None:  # after a null come only nulls; before it, every value
            past = Q(**{f"{name}__isnull": False}) if backwards else nothing
            same = Q(**{f"{name}__isnull": True})
        else:
            past = Q(**{f"{name}__{'lt' if descending else 'gt'}": value})
            if field.null and not backwards:
                past |= Q(**{f"{name}__isnull": True})
            same = Q(**{name: value})
        condition |= equal & past
        equal &= same
    return condition


def keyset_page_serializer(item: type[serializers.Serializer], name: str) -> type[serializers.Serializer]:
    """The serializer of one keyset page of ``item`` rows (``next``, ``previous``, ``results``).

    Marked as one object for the OpenAPI schema: drf-spectacular describes what a ``list`` action
    answers as an array of its response serializer, which here would read "an array of pages"."""
    page = type(
        name,
        (serializers.Serializer,),
        {
            "next": serializers.URLField(allow_null=True, help_text="The next page (null on the last one)."),
            "previous": serializers.URLField(allow_null=True, help_text="The previous page (null on the first one)."),
            "results": item(many=True),
        },
    )
    return extend_schema_serializer(many=False)(page)
