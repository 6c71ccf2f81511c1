"""drf-spectacular hooks."""

from __future__ import annotations

from typing import Any


def paths_without_trailing_slash(
    endpoints: list[tuple[str, str, str, Any]], **kwargs: Any
) -> list[tuple[str, str, str, Any]]:
    """The routes accept both forms; document the form without the slash, as docs/api.md does."""
    return [(path.rstrip("/") or "/", regex, method, callback) for path, regex, method, callback in endpoints]
