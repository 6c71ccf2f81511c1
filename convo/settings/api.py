"""Django REST framework and OpenAPI."""

from __future__ import annotations

from typing import Any

REST_FRAMEWORK: dict[str, Any] = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "conversations.api.authentication.TenantApiKeyAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["conversations.api.authentication.IsTenant"],
    "DEFAULT_PARSER_CLASSES": ["convo.api.parsers.BoundedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["convo.api.renderers.FastJSONRenderer"],
    "DEFAULT_METADATA_CLASS": "convo.api.metadata.ViewMetadata",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "convo.api.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS: dict[str, Any] = {
    "TITLE": "convo API",
    "DESCRIPTION": (
        "Conversation memory and similar-message service. Authenticate with "
        "`Authorization: Api-Key <key>`. Writes are acknowledged with 202 once committed; "
        "embedding happens in the background."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "COMPONENT_SPLIT_REQUEST": True,
    # OpenAPI 3.1 is JSON Schema 2020-12, which is what pydantic emits for the ingest payloads.
    "OAS_VERSION": "3.1.0",
    # The docs page's JavaScript and CSS are served by convo itself (no CDN): it works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "PREPROCESSING_HOOKS": ["convo.api.schema_hooks.paths_without_trailing_slash"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",  # the default, kept
        "convo.api.schema_hooks.error_responses",
    ],
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}
APPEND_SLASH = False  # an API POST must never be redirected (the body would be lost)
