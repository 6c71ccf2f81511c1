"""What the clusters API accepts: pydantic models for request bodies and query strings.

As in ``conversations.payloads``: limits are read from settings when a request is validated (each
limit is an operator setting), bodies refuse unknown fields, and every error names its field.
Query strings ignore parameters they do not know (caches and proxies add their own).
"""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from django.conf import settings
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from clustering.models import ClusterStatus

LABEL_MAX_CHARS = 200  # Cluster.label's column
CURSOR_MAX_CHARS = 1000

ClusterOrdering = Literal["-size", "size", "-last_message_at", "last_message_at"]


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")  # PostgreSQL text cannot store them
    return value


def _answer(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    limit: int = settings.CLUSTER_MAX_ANSWER_CHARS
    if len(value) > limit:
        raise ValueError(f"must be at most {limit} characters (got {len(value)})")
    return _no_nul(value)


def _label(value: str) -> str:
    if len(value) > LABEL_MAX_CHARS:
        raise ValueError(f"must be at most {LABEL_MAX_CHARS} characters (got {len(value)})")
    return _no_nul(value)


def _required_label(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return _label(value)


def _at_most(setting: str) -> AfterValidator:
    def check(value: list[UUID]) -> list[UUID]:
        limit: int = getattr(settings, setting)
        if len(value) > limit:
            raise ValueError(f"must hold at most {limit} ids (got {len(value)})")
        return value

    return AfterValidator(check)


def _page_size(value: int) -> int:
    limit: int = settings.CONVO_MAX_PAGE_SIZE
    if value > limit:
        raise ValueError(f"must be at most {limit}")
    return value


def _default_page_size() -> int:
    return int(settings.CONVO_DEFAULT_PAGE_SIZE)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Query(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ClusterAnswerIn(_Body):
    """Answer the cluster: every member gets the answer, and later look-alikes get it as a suggestion."""

    answer: Annotated[str, AfterValidator(_answer)] = Field(
        description="At most CLUSTER_MAX_ANSWER_CHARS characters (default 8000)."
    )


class ClusterRelabelIn(_Body):
    label: Annotated[str, AfterValidator(_required_label)] = Field(description="1 to 200 characters.")


class ClusterRemoveMessageIn(_Body):
    message_id: UUID = Field(description="A member of this cluster; it is re-homed, never dropped.")


class ClusterMergeIn(_Body):
    cluster_ids: Annotated[list[UUID], Field(min_length=1), _at_most("CLUSTER_MAX_MERGE")] = Field(
        description="Clusters to merge into this one (at most CLUSTER_MAX_MERGE, default 50)."
    )


class ClusterSplitIn(_Body):
    message_ids: Annotated[list[UUID], Field(min_length=1), _at_most("CLUSTER_MAX_SPLIT_MESSAGES")] = Field(
        description="Members to move into a new cluster (at most CLUSTER_MAX_SPLIT_MESSAGES, default 1000); "
        "some members must stay."
    )
    label: Annotated[str, AfterValidator(_label)] = Field(
        default="", description="The new cluster's label (default: its first message's text)."
    )


class PageQuery(_Query):
    page_size: Annotated[int, Field(ge=1), AfterValidator(_page_size)] = Field(default_factory=_default_page_size)
    cursor: Annotated[str, Field(min_length=1, max_length=CURSOR_MAX_CHARS)] | None = None


class ClusterListQuery(PageQuery):
    status: ClusterStatus | None = None
    ordering: ClusterOrdering = "-size"


class ClusteringStatsQuery(_Query):
    days: Annotated[int, Field(ge=1, le=3650)] = 30
