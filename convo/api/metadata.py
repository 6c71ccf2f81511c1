"""What ``OPTIONS`` answers on the API: the view's name, description and media types.

DRF's default also lists "actions" by introspecting each view's serializer, but most write
endpoints here validate with pydantic models and have no serializer to introspect (DRF raised,
a 500). The request bodies are described where clients look for them: the OpenAPI schema at
``/api/schema/`` and the docs page at ``/api/docs/``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rest_framework.metadata import BaseMetadata

if TYPE_CHECKING:  # rest_framework.views imports this module through its settings
    from rest_framework.request import Request
    from rest_framework.views import APIView


class ViewMetadata(BaseMetadata):
    def determine_metadata(self, request: Request, view: APIView) -> dict[str, Any]:
        return {
            "name": view.get_view_name(),
            "description": view.get_view_description(),
            "renders": [renderer.media_type for renderer in view.renderer_classes],
            "parses": [parser.media_type for parser in view.parser_classes],
        }
