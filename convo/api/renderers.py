"""JSON rendering with orjson: several times faster than the json module on list responses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from rest_framework.renderers import BaseRenderer


class FastJSONRenderer(BaseRenderer):
    media_type = "application/json"
    format = "json"
    charset = None

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Mapping[str, Any] | None = None
    ) -> bytes:
        if data is None:
            return b""
        return orjson.dumps(data, default=_default, option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS)


def _default(value: Any) -> Any:
    # DRF hands over lazy translation strings and ReturnDict/ReturnList subclasses orjson knows;
    # anything else that is string-like is rendered as its string.
    return str(value)
