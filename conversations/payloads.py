"""The ingest contract: typed, validated payloads that the API parses and the services take.

Validation runs in pydantic (compiled) rather than DRF serializers: a nested DRF serializer costs
about 0.65 ms per conversation here, which alone would blow the batch budget (docs/benchmarks.md).
Limits are read from settings at validation time, so every limit is an operator setting.
Unknown fields are errors, which is also what keeps ``tenant``, ``embedding_state`` and other
server-owned fields from being assigned by a client.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
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


_NUMBER_LIMIT = 2**63


def _check_numbers(value: Any) -> None:
    """jsonb keeps numbers exactly and hands integral ones back as integers; one of 2**63 or more
    could be stored but never read back as JSON, so it is refused here."""
    if isinstance(value, dict):
        for item in value.values():
            _check_numbers(item)
    elif isinstance(value, list):
        for item in value:
            _check_numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) >= _NUMBER_LIMIT:
        raise ValueError(f"numbers must be smaller than 2**63 in magnitude (got {value!r})")


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    _check_numbers(value)
    limit: int = settings.CONVO_MAX_JSON_FIELD_BYTES
    size = len(orjson.dumps(value))
    if size > limit:
        raise ValueError(f"must serialize to at most {limit} bytes (got {size})")
    if "\\u0000" in orjson.dumps(value).decode():
        raise ValueError("must not contain NUL characters")
    return value


def _plausible_time(value: datetime | None) -> datetime | None:
    """A platform timestamp between 1970 and a day from now: anything else is a client bug, and
    would corrupt ordering (last_message_at) or fail to read back."""
    if value is None:
        return value
    earliest = datetime(1970, 1, 1, tzinfo=UTC)
    latest = datetime.now(UTC) + timedelta(days=1)
    if not earliest <= value <= latest:
        raise ValueError("must be between 1970-01-01 and one day from now")
    return value


def _http_url(value: str) -> str:
    if value and not value.startswith(("http://", "https://")):
        raise ValueError("must be an http(s) URL")
    return _at_most(value, _URL_MAX)


_URL_MAX = 2048

Identifier = Annotated[
    str, Field(min_length=1, max_length=_IDENTIFIER_MAX), AfterValidator(lambda v: _at_most(v, _IDENTIFIER_MAX))
]
Text = Annotated[str, AfterValidator(_text)]
OptionalText = Annotated[str, AfterValidator(_optional_text)]
Transcript = Annotated[str, AfterValidator(_transcript)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_object)]
Name = Annotated[str, Field(max_length=_IDENTIFIER_MAX), AfterValidator(lambda v: _at_most(v, _IDENTIFIER_MAX))]
AvatarUrl = Annotated[str, Field(max_length=_URL_MAX), AfterValidator(_http_url)]


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
    sender_name: Name = ""
    sender_avatar_url: AvatarUrl = ""
    external_id: Identifier | None = Field(default=None, description="The platform's id of the message.")
    raw_payload: JsonObject | None = None
    sent_at: Annotated[AwareDatetime | None, AfterValidator(_plausible_time)] = Field(
        default=None, description="When the platform says it was sent."
    )


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
    """Fields a client may change on an existing conversation (PATCH: all optional; only
    ``session_id`` may be set to null)."""

    user_id: Identifier | None = None
    channel: Channel | None = None
    session_id: Identifier | None = None
    status: ConversationStatus | None = None
    summary: OptionalText | None = None
    transcript: Transcript | None = None
    metadata: JsonObject | None = None

    @model_validator(mode="after")
    def _no_nulls(self) -> ConversationUpdateIn:
        nulls = sorted(name for name in self.model_fields_set if name != "session_id" and getattr(self, name) is None)
        if nulls:
            raise ValueError(f"{', '.join(nulls)}: may not be null")
        return self


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


def _finite_vector(value: list[float]) -> list[float]:
    if not all(math.isfinite(x) and abs(x) < 3.4e38 for x in value):
        raise ValueError("must hold finite numbers within float32 range")
    if not any(value):
        raise ValueError("must not be all zeros (it has no direction)")
    return value


def k_limit(value: int) -> int:
    limit: int = settings.SEARCH_MAX_K
    if value > limit:
        raise ValueError(f"must be at most {limit}")
    return value


class SearchFiltersIn(_Payload):
    user_id: Identifier | None = None
    channel: Channel | None = None
    status: ConversationStatus | None = None
    role: Role | None = None
    metadata: JsonObject | None = None
    created_after: AwareDatetime | None = None
    created_before: AwareDatetime | None = None


class SearchIn(_Payload):
    """A search over the tenant's messages, by the meaning of ``query`` (or a ready ``vector``),
    by its words (``mode="text"``), or both fused (``mode="hybrid"``)."""

    query: OptionalText | None = None
    vector: Annotated[list[float], AfterValidator(_finite_vector)] | None = Field(
        default=None, description="A query vector in the active model's space."
    )
    mode: Literal["vector", "text", "hybrid"] = "vector"
    k: Annotated[int, Field(ge=1), AfterValidator(k_limit)] = 10
    filters: SearchFiltersIn = Field(default_factory=SearchFiltersIn)
    min_similarity: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.7
    adaptive: bool = Field(default=True, description="Lower the threshold step by step when fewer than k pass.")
    time_weight: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    channel_weight: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    channel: Channel | None = Field(default=None, description="The channel asking, for the same-channel bonus.")

    @model_validator(mode="after")
    def _consistent(self) -> SearchIn:
        if self.query is None and self.vector is None:
            raise ValueError("give query or vector")
        if self.mode != "vector" and not (self.query and self.query.strip()):
            raise ValueError(f"mode {self.mode!r} needs a query text")
        if self.query is not None and self.vector is not None:
            raise ValueError("give query or vector, not both")
        if self.time_weight + self.channel_weight > 1.0:
            raise ValueError("time_weight + channel_weight must be at most 1")
        return self


class ContextIn(_Payload):
    """Context for an LLM prompt about one end user (seed 004's buildConversationContext)."""

    user_id: Identifier
    query: OptionalText | None = None
    recent: Annotated[int, Field(ge=0, le=200)] = 10
    k: Annotated[int, Field(ge=0), AfterValidator(k_limit)] = 5
    token_budget: Annotated[int, Field(ge=1)] | None = None
    channel: Channel | None = None
