"""Writes of the feedback app: records from the chat backend, and the learning queue's review.

One code path for the API, the admin and (later) commands. Each ``*_record`` service resolves the
conversation and message for the tenant (``NotFound`` naming the field for another tenant's id or
a deleted conversation), stores the record and, in the same transaction, the ``LearningItem`` it
gives rise to:

- every owner correction (question: the user's message before the corrected response);
- feedback with a rating at or below ``FEEDBACK_LOW_RATING_THRESHOLD``, and every thumbs down
  (no proposed answer yet: the reviewer writes one when approving);
- every answer given to a cluster (``learning_item_from_cluster_answer``, called by
  ``clustering.services.moderation.cluster_answer``).

Review: ``learning_item_approve`` (optionally with an edited answer or question) and
``learning_item_reject`` move a pending item on, once; a second review is a ``Conflict`` (409).
Approving takes the item into the knowledge base at once (feedback/knowledge.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from clustering.models import Cluster
from conversations.models import Conversation, Message, Role, Tenant
from convo.errors import Conflict, NotFound, ServiceError
from feedback.knowledge import learning_item_apply
from feedback.models import (
    THUMBS_DOWN,
    THUMBS_UP,
    Feedback,
    FeedbackKind,
    LearningItem,
    LearningSource,
    LearningStatus,
    OwnerCorrection,
    ResponseAnalytics,
    VoiceTranscript,
)
from feedback.payloads import AnalyticsIn, CorrectionIn, FeedbackIn, TranscriptIn

if TYPE_CHECKING:
    from clustering.services.moderation import Actor

SUPERSEDED_NOTE = "Superseded by a newer answer to the same cluster."


# --- records -------------------------------------------------------------------------------------


@transaction.atomic
def feedback_record(*, tenant: Tenant, payload: FeedbackIn) -> Feedback:
    """Store a thumbs or a rating; a low one also queues a learning item (same transaction)."""
    conversation, message = _target(tenant, payload.conversation_id, payload.message_id)
    if payload.thumbs is not None:
        kind, value = FeedbackKind.THUMBS, THUMBS_UP if payload.thumbs == "up" else THUMBS_DOWN
    else:
        kind, value = FeedbackKind.RATING, int(payload.rating or 0)
    feedback = Feedback.objects.create(
        tenant=tenant,
        conversation=conversation,
        message=message,
        kind=kind,
        value=value,
        comment=payload.comment,
        source=payload.source,
    )
    if feedback_is_low(kind=kind, value=value):
        LearningItem.objects.create(
            tenant=tenant,
            source=LearningSource.LOW_RATING,
            feedback=feedback,
            question=_question_before(conversation, message),
            original_answer=message.text if message is not None else "",
        )
    return feedback


def feedback_is_low(*, kind: str, value: int) -> bool:
    """A thumbs down, or a rating at or below ``FEEDBACK_LOW_RATING_THRESHOLD``."""
    if kind == FeedbackKind.THUMBS:
        return value == THUMBS_DOWN
    return value <= int(settings.FEEDBACK_LOW_RATING_THRESHOLD)


@transaction.atomic
def correction_record(*, tenant: Tenant, payload: CorrectionIn) -> OwnerCorrection:
    """Store an owner's correction and queue it for review as a learning item (same transaction).
    The original response is taken from the message when the payload leaves it out."""
    conversation, message = _target(tenant, payload.conversation_id, payload.message_id)
    original = payload.original_response or (message.text if message is not None else "")
    correction = OwnerCorrection.objects.create(
        tenant=tenant,
        conversation=conversation,
        message=message,
        original_response=original,
        corrected_text=payload.corrected_text.strip(),
        reason=payload.reason,
        corrected_by=payload.corrected_by.strip(),
    )
    LearningItem.objects.create(
        tenant=tenant,
        source=LearningSource.CORRECTION,
        correction=correction,
        question=_question_before(conversation, message),
        original_answer=correction.original_response,
        proposed_answer=correction.corrected_text,
    )
    return correction


@transaction.atomic
def analytics_record(*, tenant: Tenant, payload: AnalyticsIn) -> ResponseAnalytics:
    conversation, message = _target(tenant, payload.conversation_id, payload.message_id)
    return ResponseAnalytics.objects.create(
        tenant=tenant,
        conversation=conversation,
        message=message,
        latency_ms=payload.latency_ms,
        model=payload.model,
        prompt_tokens=payload.prompt_tokens,
        completion_tokens=payload.completion_tokens,
        cost=payload.cost,
        from_cache=payload.from_cache,
    )


@transaction.atomic
def transcript_record(*, tenant: Tenant, payload: TranscriptIn) -> VoiceTranscript:
    conversation, _ = _target(tenant, payload.conversation_id, None)
    return VoiceTranscript.objects.create(
        tenant=tenant,
        conversation=conversation,
        text=payload.text,
        language=payload.language,
        duration_seconds=payload.duration_seconds,
        audio_url=payload.audio_url,
    )


# --- the learning queue ----------------------------------------------------------------------------


@transaction.atomic
def learning_item_from_cluster_answer(*, cluster: Cluster) -> LearningItem:
    """Queue a just-answered cluster: its representative text as the question, its answer as the
    proposed answer. Called inside ``cluster_answer``'s transaction, so the item exists exactly
    when the answer does. Re-answering makes a new item (one per ``answer_version``); the
    cluster's items still pending for older answers are rejected as superseded."""
    now = timezone.now()
    LearningItem.objects.filter(
        cluster_id=cluster.pk, status=LearningStatus.PENDING, cluster_answer_version__lt=cluster.answer_version
    ).update(status=LearningStatus.REJECTED, reviewed_by="system", reviewed_at=now, review_note=SUPERSEDED_NOTE)
    return LearningItem.objects.create(
        tenant_id=cluster.tenant_id,
        source=LearningSource.ANSWERED_CLUSTER,
        cluster=cluster,
        cluster_answer_version=cluster.answer_version,
        question=cluster.representative_text,
        proposed_answer=cluster.answer,
    )


@transaction.atomic
def learning_item_approve(
    *, item: LearningItem, actor: Actor, answer: str | None = None, question: str | None = None, note: str = ""
) -> LearningItem:
    """Approve a pending item, with ``answer`` (an edit) or else its proposed answer, which must
    then not be blank (low-rating items propose none), and take it into the knowledge base in the
    same transaction (``learning_item_apply``): the item ends ``applied``, linked to the entry it
    created or updated, or stays ``approved`` when it has no question (``question`` can give
    one, or reword the question the entry will answer). Raises ``Conflict`` unless pending."""
    current = _locked(item)
    text = (answer if answer is not None else current.proposed_answer).strip()
    if not text:
        raise ServiceError(
            "An answer is required.", fields={"answer": ["This item proposes no answer: give one to approve it."]}
        )
    limit = int(settings.FEEDBACK_MAX_ANSWER_CHARS)
    if len(text) > limit:
        raise ServiceError("The answer is too long.", fields={"answer": [f"Must be at most {limit} characters."]})
    if question is not None:
        asked = question.strip()
        question_limit = int(settings.KNOWLEDGE_MAX_QUESTION_CHARS)
        if len(asked) > question_limit:
            raise ServiceError(
                "The question is too long.", fields={"question": [f"Must be at most {question_limit} characters."]}
            )
        if asked:
            current.question = asked
            current.save(update_fields=["question"])
    current.approved_answer = text
    _review(current, LearningStatus.APPROVED, actor, note)
    learning_item_apply(item=current, actor=actor)
    current.refresh_from_db()
    return current


@transaction.atomic
def learning_item_reject(*, item: LearningItem, actor: Actor, note: str = "") -> LearningItem:
    """Reject a pending item. Raises ``Conflict`` unless pending."""
    current = _locked(item)
    _review(current, LearningStatus.REJECTED, actor, note)
    return current


# --- internals -----------------------------------------------------------------------------------


def _target(tenant: Tenant, conversation_id: UUID, message_id: UUID | None) -> tuple[Conversation, Message | None]:
    """The tenant's live conversation and, when named, its message: 404 naming the field for an
    id the tenant does not have; 400 for a message of another of its conversations."""
    conversation = Conversation.objects.filter(pk=conversation_id, tenant=tenant, deleted_at__isnull=True).first()
    if conversation is None:
        raise NotFound("Conversation not found.", fields={"conversation_id": ["No such conversation."]})
    if message_id is None:
        return conversation, None
    message = Message.objects.filter(pk=message_id, tenant=tenant, conversation__deleted_at__isnull=True).first()
    if message is None:
        raise NotFound("Message not found.", fields={"message_id": ["No such message."]})
    if message.conversation_id != conversation.pk:
        raise ServiceError(
            "The message is not in this conversation.",
            fields={"message_id": ["This message belongs to another conversation."]},
        )
    return conversation, message


def _question_before(conversation: Conversation, message: Message | None) -> str:
    """The end user's last message before ``message`` (or the conversation's last one)."""
    asked = Message.objects.filter(conversation=conversation, role=Role.USER)
    if message is not None:
        # Rows of one transaction share created_at; the (uuid7) id orders them, as the index does.
        asked = asked.filter(Q(created_at__lt=message.created_at) | Q(created_at=message.created_at, id__lt=message.pk))
    return asked.order_by("-created_at", "-id").values_list("text", flat=True).first() or ""


def _locked(item: LearningItem) -> LearningItem:
    current = LearningItem.objects.select_for_update().filter(pk=item.pk).first()
    if current is None:
        raise NotFound("Learning item not found.")
    if current.status != LearningStatus.PENDING:
        raise Conflict(f"This item is already {current.status}: only pending items can be reviewed.")
    return current


def _review(item: LearningItem, status: str, actor: Actor, note: str) -> None:
    limit = int(settings.FEEDBACK_MAX_REASON_CHARS)
    if len(note) > limit:
        raise ServiceError("The note is too long.", fields={"note": [f"Must be at most {limit} characters."]})
    item.status = status
    item.reviewed_by = actor.label[:200]
    item.reviewed_at = timezone.now()
    item.review_note = note
    item.save(update_fields=["status", "approved_answer", "reviewed_by", "reviewed_at", "review_note"])
