"""The ingest contract: typed, validated payloads that the API parses and the services take.

Validation runs in pydantic (compiled) rather than DRF serializers: a nested DRF serializer costs
about 0.65 ms per conversation here, which alone would blow the batch budget (docs/benchmarks.md).
Limits are read from settings at validation time, so every limit is an operator setting.
Unknown fields are errors, which is also what keeps ``tenant``, ``embedding_state`` and other
server-owned fields from being assigned by a client.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any
from uuid import UUID

import orjson
from django.conf import settings
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from conversations.models import Channel, ConversationStatus, Role

_IDENTIFIER_MAX = 255


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    _at_most(value, settings.CONVO_MAX_TEXT_CHARS)
    return value


def _optional_text(value: str) -> str:
    return _at_most(value, settings.CONVO_MAX_TEXT_CHARS)


def _transcript(value: str) -> str:
    return _at_most(value, settings.CONVO_MAX_TRANSCRIPT_CHARS)


def _at_most(value: str, limit: int) -> str:
    if len(value) > limit:
        raise ValueError(f"must be at most {limit} characters (got {len(value)})")
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")  # PostgreSQL text cannot store them
    return value


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    limit: int = settings.CONVO_MAX_JSON_FIELD_BYTES
    size = len(orjson.dumps(value))
    if size > limit:
        raise ValueError(f"must serialize to at most {limit} bytes (got {size})")
    if "\\u0000" in orjson.dumps(value).decode():
        raise ValueError("must not contain NUL characters")
    return value


def _http_url(value: str) -> str:
    if value and not value.startswith(("http://", "https://")):
        raise ValueError("must be an http(s) URL")
    return value


Identifier = Annotated[
    str, Field(min_length=1, max_length=_IDENTIFIER_MAX), AfterValidator(lambda v: _at_most(v, _IDENTIFIER_MAX))
]
Text = Annotated[str, AfterValidator(_text)]
OptionalText = Annotated[str, AfterValidator(_optional_text)]
Transcript = Annotated[str, AfterValidator(_transcript)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_object)]
AvatarUrl = Annotated[str, Field(max_length=2048), AfterValidator(_http_url)]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def fingerprint(self) -> str:
        """A stable hash of the validated payload, for telling a replay from a different request."""
        canonical = orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(canonical).hexdigest()


class MessageIn(_Payload):
    """One message inside a conversation payload."""

    role: Role = Role.USER
    text: Text
    sender_name: Annotated[str, Field(max_length=_IDENTIFIER_MAX)] = ""
    sender_avatar_url: AvatarUrl = ""
    external_id: Identifier | None = Field(default=None, description="The platform's id of the message.")
    raw_payload: JsonObject | None = None
    sent_at: AwareDatetime | None = Field(default=None, description="When the platform says it was sent.")


def _messages_limit(value: list[MessageIn]) -> list[MessageIn]:
    limit: int = settings.CONVO_MAX_MESSAGES_PER_CONVERSATION
    if len(value) > limit:
        raise ValueError(f"must hold at most {limit} messages (got {len(value)})")
    return value


class ConversationIn(_Payload):
    """A conversation to store, optionally with its messages."""

    external_id: Identifier | None = Field(
        default=None, description="Your id for the conversation. Replaying it returns the same conversation."
    )
    user_id: Identifier = Field(description="The end user's id on your platform.")
    channel: Channel = Channel.WEB
    session_id: Identifier | None = None
    status: ConversationStatus = ConversationStatus.ACTIVE
    summary: OptionalText = ""
    transcript: Transcript = ""
    metadata: JsonObject = Field(default_factory=dict)
    messages: Annotated[list[MessageIn], AfterValidator(_messages_limit)] = Field(default_factory=list)


class InboundMessageIn(MessageIn):
    """An inbound message (seed 002's IngestMessage): attached to ``conversation_id``, or to the
    active conversation of (``user_id``, ``session_id``), which is created when there is none."""

    conversation_id: UUID | None = None
    user_id: Identifier | None = None
    session_id: Identifier | None = None
    channel: Channel = Channel.WEB

    @model_validator(mode="after")
    def _needs_a_conversation(self) -> InboundMessageIn:
        if self.conversation_id is None and (self.user_id is None or self.session_id is None):
            raise ValueError("give conversation_id, or both user_id and session_id")
        return self


class ConversationUpdateIn(_Payload):
    """Fields a client may change on an existing conversation (PATCH: all optional)."""

    user_id: Identifier | None = None
    channel: Channel | None = None
    session_id: Identifier | None = None
    status: ConversationStatus | None = None
    summary: OptionalText | None = None
    transcript: Transcript | None = None
    metadata: JsonObject | None = None


class ConversationUpsertIn(_Payload):
    """PUT: the whole writable state of a conversation; creates it under the given id if absent."""

    external_id: Identifier | None = None
    user_id: Identifier
    channel: Channel = Channel.WEB
    session_id: Identifier | None = None
    status: ConversationStatus = ConversationStatus.ACTIVE
    summary: OptionalText = ""
    transcript: Transcript = ""
    metadata: JsonObject = Field(default_factory=dict)


# Envelopes, for the OpenAPI schema. Batch items are validated one by one (a bad item must not
# spoil the good ones), so these two are documentation of the request shape.
class ConversationBatchIn(BaseModel):
    conversations: list[ConversationIn]


class InboundMessageBatchIn(BaseModel):
    messages: list[InboundMessageIn]


class ConversationMessagesIn(BaseModel):
    messages: list[MessageIn]
