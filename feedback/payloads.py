"""What the feedback API accepts: pydantic models for request bodies and query strings.

As in ``conversations.payloads`` and ``clustering.payloads``: text limits are read from settings
when a request is validated (convo/settings/feedback.py), bodies refuse unknown fields (so a
client cannot set ``tenant`` or ``status``), and every error names its field.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Literal
from uuid import UUID

from django.conf import settings
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from clustering.payloads import PageQuery
from conversations.models import Channel
from conversations.payloads import k_limit
from feedback.models import RATING_MAX, RATING_MIN, KnowledgeSource, LearningSource, LearningStatus

_INT_MAX = 2**31 - 1  # PostgreSQL integer columns
_NAME_MAX = 255


def _clean(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")  # PostgreSQL text cannot store them
    return value


def _limited(setting: str, *, required: bool) -> Callable[[str], str]:
    def check(value: str) -> str:
        if required and not value.strip():
            raise ValueError("must not be blank")
        limit: int = getattr(settings, setting)
        if len(value) > limit:
            raise ValueError(f"must be at most {limit} characters (got {len(value)})")
        return _clean(value)

    return check


def _required(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return _clean(value)


def _http_url(value: str) -> str:
    if value and not value.startswith(("http://", "https://")):
        raise ValueError("must be an http(s) URL")
    return _clean(value)


Comment = Annotated[str, AfterValidator(_limited("FEEDBACK_MAX_COMMENT_CHARS", required=False))]
Answer = Annotated[str, AfterValidator(_limited("FEEDBACK_MAX_ANSWER_CHARS", required=True))]
OptionalAnswer = Annotated[str, AfterValidator(_limited("FEEDBACK_MAX_ANSWER_CHARS", required=False))]
Reason = Annotated[str, AfterValidator(_limited("FEEDBACK_MAX_REASON_CHARS", required=False))]
TranscriptText = Annotated[str, AfterValidator(_limited("FEEDBACK_MAX_TRANSCRIPT_CHARS", required=True))]
Question = Annotated[str, AfterValidator(_limited("KNOWLEDGE_MAX_QUESTION_CHARS", required=True))]
OptionalQuestion = Annotated[str, AfterValidator(_limited("KNOWLEDGE_MAX_QUESTION_CHARS", required=False))]
Name = Annotated[str, Field(min_length=1, max_length=_NAME_MAX), AfterValidator(_required)]
Count = Annotated[int, Field(ge=0, le=_INT_MAX)]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Target(_Payload):
    conversation_id: UUID = Field(description="One of your conversations.")
    message_id: UUID | None = Field(default=None, description="The single response this is about (optional).")


class FeedbackIn(_Target):
    """Thumbs up/down or a 1-5 rating: give exactly one of ``thumbs`` and ``rating``."""

    thumbs: Literal["up", "down"] | None = None
    rating: Annotated[int, Field(ge=RATING_MIN, le=RATING_MAX)] | None = None
    comment: Comment = Field(default="", description="At most FEEDBACK_MAX_COMMENT_CHARS characters.")
    source: Channel = Field(default=Channel.WEB, description="The channel the feedback came from.")

    @model_validator(mode="after")
    def _one_verdict(self) -> FeedbackIn:
        if (self.thumbs is None) == (self.rating is None):
            raise ValueError("give exactly one of thumbs and rating")
        return self


class CorrectionIn(_Target):
    original_response: OptionalAnswer = Field(default="", description="The response as it was given.")
    corrected_text: Answer = Field(description="What it should have said (at most FEEDBACK_MAX_ANSWER_CHARS).")
    reason: Reason = Field(default="", description="At most FEEDBACK_MAX_REASON_CHARS characters.")
    corrected_by: Name = Field(description="Who corrected it (an owner's e-mail or handle).")


class AnalyticsIn(_Target):
    latency_ms: Count
    model: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_clean)]
    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    cost: Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=6)] = Decimal(0)
    from_cache: bool = False


class TranscriptIn(_Payload):
    conversation_id: UUID = Field(description="One of your conversations.")
    text: TranscriptText = Field(description="At most FEEDBACK_MAX_TRANSCRIPT_CHARS characters.")
    language: Annotated[str, Field(max_length=35), AfterValidator(_clean)] = Field(
        default="", description="A BCP 47 tag such as `en` or `pt-BR`."
    )
    duration_seconds: Annotated[Decimal, Field(ge=0, max_digits=9, decimal_places=3)]
    audio_url: Annotated[str, Field(max_length=2048), AfterValidator(_http_url)] = ""


class LearningApproveIn(_Payload):
    answer: OptionalAnswer | None = Field(
        default=None, description="An edited answer to approve instead of the proposed one."
    )
    question: OptionalQuestion | None = Field(
        default=None, description="The question the knowledge entry answers, when it should differ from the item's."
    )
    note: Reason = Field(default="", description="The reviewer's note.")


class LearningRejectIn(_Payload):
    note: Reason = Field(default="", description="Why it was rejected.")


class RecordListQuery(PageQuery):
    conversation_id: UUID | None = None


class LearningItemListQuery(PageQuery):
    status: LearningStatus | None = None
    source: LearningSource | None = None


# --- the knowledge base ---------------------------------------------------------------------------


def _tag(value: str) -> str:
    limit = int(settings.KNOWLEDGE_MAX_TAG_CHARS)
    if not value.strip():
        raise ValueError("a tag must not be blank")
    if len(value.strip()) > limit:
        raise ValueError(f"a tag must be at most {limit} characters")
    return _clean(value)


def _tags(value: list[str]) -> list[str]:
    limit = int(settings.KNOWLEDGE_MAX_TAGS)
    if len(value) > limit:
        raise ValueError(f"at most {limit} tags")
    return value


Tags = Annotated[list[Annotated[str, AfterValidator(_tag)]], AfterValidator(_tags)]
Key = Annotated[str, Field(max_length=200), AfterValidator(_clean)]


class KnowledgeEntryIn(_Payload):
    question: Question = Field(description="What the entry answers (at most KNOWLEDGE_MAX_QUESTION_CHARS).")
    answer: Answer = Field(description="The approved answer (at most FEEDBACK_MAX_ANSWER_CHARS).")
    tags: Tags = Field(default_factory=list, description="At most KNOWLEDGE_MAX_TAGS; stored lower-cased.")
    key: Key = Field(default="", description="Your own name for the entry, unique per tenant (imports match on it).")
    active: bool = True


class KnowledgeEntryPatch(_Payload):
    question: Question | None = None
    answer: Answer | None = None
    tags: Tags | None = None
    active: bool | None = None


class KnowledgeListQuery(PageQuery):
    source: KnowledgeSource | None = None
    active: bool | None = None
    tag: Annotated[str, Field(max_length=50), AfterValidator(_clean)] | None = None


class KnowledgeSearchIn(_Payload):
    """Search the tenant's active entries by meaning (``vector``), words (``text``) or both."""

    query: Question
    mode: Literal["vector", "text", "hybrid"] = "hybrid"
    k: Annotated[int, Field(ge=1), AfterValidator(k_limit)] = 10
    tags: Tags = Field(default_factory=list, description="Only entries carrying every one of these tags.")


class KnowledgeLookupIn(_Payload):
    """A new question, for the best approved answer."""

    question: Question
