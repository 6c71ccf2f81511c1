"""The staff admin of feedback: the records, read-only; the learning queue's review; the knowledge
base; and the answer-lookup counters.

Every write here goes through the same services as the API (ARCHITECTURE.md, decision 7), so the
admin cannot skip what they do (history versions, re-embedding, review bookkeeping):

- Records (feedback, corrections, analytics, transcripts) come from the chat backend through the
  API and are never added, changed or deleted here.
- Learning items are reviewed with ``learning_item_approve`` / ``learning_item_reject``: in bulk
  from the list, or one at a time on the item's page (edit the answer or the question, then
  approve; or reject with a note). The page shows the original and the proposed (or approved)
  answer side by side, with the differences marked, and links the knowledge entry an approval
  made or updated.
- Knowledge entries are added with ``knowledge_entry_create`` and changed with
  ``knowledge_entry_update`` (never a model save), so every admin edit is a new version in the
  entry's history, which the entry's page shows newest first with what each version changed.
- The per-day lookup counters are read-only, with the hit rate (answered / all lookups).

A service's refusal (``ServiceError``, ``Conflict``) becomes a form error or an admin message,
never a 500.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db.models import F, FloatField, QuerySet, Sum
from django.db.models.functions import Cast, NullIf
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import formats, timezone
from django.utils.html import escape, format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import Truncator

from clustering.services.moderation import Actor
from conversations.admin import BigTableAdmin, adopt_saved
from conversations.models import Tenant
from convo.errors import Conflict, NotFound, ServiceError
from feedback.knowledge import (
    knowledge_entry_create,
    knowledge_entry_delete,
    knowledge_entry_update,
    knowledge_fields_clean,
)
from feedback.models import (
    Feedback,
    KnowledgeEntry,
    KnowledgeEntryVersion,
    KnowledgeLookupDay,
    KnowledgeSource,
    LearningItem,
    LearningStatus,
    OwnerCorrection,
    ResponseAnalytics,
    VoiceTranscript,
)
from feedback.selectors import feedback_stats
from feedback.services import learning_item_approve, learning_item_reject

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldsetSpec

# Width at which the side-by-side diff wraps its lines.
DIFF_WRAP_COLUMNS = 70
# Versions an entry's page shows (each edit adds one; the oldest beyond this are not rendered).
HISTORY_SHOWN = 20
# Characters of an answer in the history table (the diff column shows what changed in full).
HISTORY_ANSWER_CHARS = 500
# Refusals named one by one after a bulk action; the rest are counted.
REFUSALS_NAMED = 5


# --- shared pieces -------------------------------------------------------------------------------


def _actor(request: HttpRequest) -> Actor:
    # admin_view only lets active staff through: the user is a real one.
    return Actor.for_user(cast(AbstractBaseUser, request.user))


def _error_text(exc: ServiceError) -> str:
    """The service's message and its per-field details, as one line for the user."""
    details = [detail for field_errors in (exc.fields or {}).values() for detail in field_errors]
    return " ".join([exc.message, *details])


def _report(request: HttpRequest, model_admin: admin.ModelAdmin[Any], done: str, refused: list[str]) -> None:
    """A bulk action's outcome: what was done, then the refusals (the first few by name)."""
    model_admin.message_user(request, done, messages.SUCCESS)
    if refused:
        more = f" (and {len(refused) - REFUSALS_NAMED} more)" if len(refused) > REFUSALS_NAMED else ""
        model_admin.message_user(request, f"Not done: {' · '.join(refused[:REFUSALS_NAMED])}{more}", messages.ERROR)


def _entry_link(entry_id: UUID | None, text: str = "") -> str:
    if entry_id is None:
        return "—"
    url = reverse("admin:feedback_knowledgeentry_change", args=[quote(entry_id)])
    return format_html('<a href="{}">{}</a>', url, text or entry_id)


def _form_errors(form: forms.Form, exc: ServiceError) -> None:
    """A service's refusal on the form: each named field's errors on that field, the rest (and
    the message, when no field is named) above the form."""
    fields = exc.fields or {}
    for name, errors in fields.items():
        form.add_error(name if name in form.fields else None, errors)
    if not fields:
        form.add_error(None, exc.message)


class _ReadOnlyAdmin(BigTableAdmin):
    """Records as the chat backend sent them: viewable, never edited here."""

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- records -------------------------------------------------------------------------------------


@admin.register(Feedback)
class FeedbackAdmin(_ReadOnlyAdmin):
    """The list carries the feedback app's counters above it (``feedback_stats``, the same figures
    as ``GET /api/v1/feedback/stats``): of the tenant chosen in the filter, or of every tenant."""

    list_display = ("id", "__str__", "source", "tenant", "conversation_id", "created_at")
    list_filter = ("tenant", "kind", "value", "source")
    change_list_template = "admin/feedback/feedback/change_list.html"

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        tenant_id = request.GET.get("tenant__id__exact", "")
        tenant = Tenant.objects.filter(pk=int(tenant_id)).first() if tenant_id.isdigit() else None
        stats = feedback_stats(tenant=tenant)
        context = {**(extra_context or {}), "feedback_stats": stats, "stats_tenant": tenant}
        return super().changelist_view(request, context)


@admin.register(OwnerCorrection)
class OwnerCorrectionAdmin(_ReadOnlyAdmin):
    list_display = ("id", "corrected", "corrected_by", "tenant", "created_at")
    list_filter = ("tenant",)
    search_fields = ("corrected_text", "corrected_by")
    list_defer = ("original_response", "reason")

    @admin.display(description="corrected text")
    def corrected(self, obj: OwnerCorrection) -> str:
        return Truncator(obj.corrected_text).chars(80)


@admin.register(ResponseAnalytics)
class ResponseAnalyticsAdmin(_ReadOnlyAdmin):
    list_display = ("id", "model", "latency_ms", "prompt_tokens", "completion_tokens", "cost", "from_cache", "tenant")
    list_filter = ("tenant", "from_cache", "model")


@admin.register(VoiceTranscript)
class VoiceTranscriptAdmin(_ReadOnlyAdmin):
    list_display = ("id", "language", "duration_seconds", "tenant", "created_at")
    list_filter = ("tenant", "language")
    list_defer = ("text",)


# --- the learning queue --------------------------------------------------------------------------


def answer_diff(original: str, proposed: str, *, todesc: str = "proposed answer") -> str:
    """An HTML table with ``original`` and ``proposed`` side by side, changes marked.
    ``difflib.HtmlDiff`` escapes ``&``, ``<`` and ``>`` of the texts, so tenant text never
    becomes markup (tests/feedback/test_admin.py checks it)."""
    table = difflib.HtmlDiff(wrapcolumn=DIFF_WRAP_COLUMNS).make_table(
        original.splitlines() or [""],
        proposed.splitlines() or [""],
        fromdesc="original answer",
        todesc=escape(todesc),
    )
    return mark_safe(table)  # noqa: S308 the texts inside are escaped by HtmlDiff


class LearningItemReviewForm(forms.Form):
    """One item's review. Only the shape is checked here: the services judge the content (blank
    or too-long answer, too-long question or note), so the API and the admin refuse the same
    things, and their refusals are put back on these fields."""

    question = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="The question the knowledge entry answers: reword it if needed (left empty, it stays as it is).",
    )
    answer = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 6}),
        help_text="What the knowledge base will answer: edit it before approving if needed.",
    )
    note = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Why (kept with the review; useful when rejecting).",
    )

    @classmethod
    def for_item(cls, item: LearningItem) -> LearningItemReviewForm:
        return cls(initial={"question": item.question, "answer": item.proposed_answer})


_ITEM_FIELDS = (
    "id",
    "tenant",
    "source",
    "status",
    "question",
    "diff",
    "original_answer",
    "proposed_answer",
    "approved_answer",
    "knowledge_entry",
    "correction",
    "feedback",
    "cluster",
    "cluster_answer_version",
    "reviewed_by",
    "reviewed_at",
    "review_note",
    "created_at",
)


@admin.register(LearningItem)
class LearningItemAdmin(BigTableAdmin):
    """The review queue: pending items first come oldest first under the "pending" filter. The
    item's own form is view-only; reviewing is a POST to ``review_view`` or a bulk action, each
    calling one service per item."""

    change_form_template = "admin/feedback/learningitem/change_form.html"
    list_display = ("short_question", "source", "status", "tenant", "created_at", "reviewed_by")
    list_filter = ("status", "source", "tenant")
    search_fields = ("question", "proposed_answer")
    list_defer = ("original_answer", "approved_answer", "review_note")
    fields = _ITEM_FIELDS
    readonly_fields = _ITEM_FIELDS
    actions = ["approve_selected", "reject_selected"]

    def get_ordering(self, request: HttpRequest) -> tuple[str, ...]:
        return ("created_at", "id")  # the (tenant, status, created_at, id) queue order

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: LearningItem | None = None) -> bool:
        return False  # reviewing goes through the services, never a form save

    def has_delete_permission(self, request: HttpRequest, obj: LearningItem | None = None) -> bool:
        return False

    def has_review_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("feedback.change_learningitem")

    @admin.display(description="question")
    def short_question(self, obj: LearningItem) -> str:
        return Truncator(obj.question or "(no question)").chars(80)

    @admin.display(description="original → proposed (approved, once reviewed)")
    def diff(self, obj: LearningItem) -> str:
        if obj.approved_answer:
            return answer_diff(obj.original_answer, obj.approved_answer, todesc="approved answer")
        return answer_diff(obj.original_answer, obj.proposed_answer)

    @admin.display(description="knowledge entry")
    def knowledge_entry(self, obj: LearningItem) -> str:
        if obj.entry_id is None:
            return "— (not applied)"
        return _entry_link(obj.entry_id, "the entry this item created or updated")

    # --- one item's review

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        context: dict[str, Any] = {**(extra_context or {}), "can_review": self.has_review_permission(request)}
        if context["can_review"]:
            item = self.get_object(request, unquote(object_id))
            if item is not None and item.status == LearningStatus.PENDING:
                context["review_form"] = LearningItemReviewForm.for_item(item)
                context["review_url"] = reverse("admin:feedback_learningitem_review", args=[quote(item.pk)])
        return super().change_view(request, object_id, form_url, extra_context=context)

    def get_urls(self) -> list[URLPattern]:
        review = path(
            "<path:object_id>/review/",
            self.admin_site.admin_view(self.review_view),  # staff only, CSRF-protected
            name="feedback_learningitem_review",
        )
        return [review, *super().get_urls()]

    def review_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """GET: the item's review page. POST with ``_approve`` (the default) or ``_reject``: one
        service call. A refused edit comes back on the page with the errors on its fields; an item
        someone already reviewed goes back to its page with the refusal as a message."""
        if not self.has_review_permission(request):
            raise PermissionDenied
        item = self.get_object(request, unquote(object_id))
        if item is None:
            self.message_user(request, "That learning item does not exist.", messages.WARNING)
            return HttpResponseRedirect(reverse("admin:feedback_learningitem_changelist"))
        if request.method != "POST":
            if item.status != LearningStatus.PENDING:
                self.message_user(request, f"This item is already {item.status}.", messages.WARNING)
                return self._back_to(item)
            return self._review_page(request, item, LearningItemReviewForm.for_item(item))
        form = LearningItemReviewForm(request.POST)
        form.is_valid()  # every field is optional text: this only fills cleaned_data
        try:
            done = self._review(request, item, form.cleaned_data)
        except (Conflict, NotFound) as exc:
            self.message_user(request, _error_text(exc), messages.ERROR)
            return self._back_to(item)
        except ServiceError as exc:
            _form_errors(form, exc)
            return self._review_page(request, item, form)
        self.message_user(request, done, messages.SUCCESS)
        return self._back_to(item)

    def _review(self, request: HttpRequest, item: LearningItem, data: dict[str, str]) -> str:
        """Run the chosen service; returns the message that says what it did."""
        actor, note = _actor(request), data.get("note", "")
        if "_reject" in request.POST:
            learning_item_reject(item=item, actor=actor, note=note)
            return "Rejected."
        asked = data.get("question", "").strip()
        done = learning_item_approve(
            item=item,
            actor=actor,
            answer=data.get("answer", ""),
            # Unchanged (or emptied): the service keeps the item's question.
            question=asked if asked and asked != item.question else None,
            note=note,
        )
        if done.entry_id is None:
            return "Approved. The item has no question to answer, so no knowledge entry was made."
        return format_html("Approved and applied to the knowledge base: {}.", _entry_link(done.entry_id, "the entry"))

    def _review_page(self, request: HttpRequest, item: LearningItem, form: LearningItemReviewForm) -> TemplateResponse:
        edited = form.data.get("answer", item.proposed_answer) if form.is_bound else item.proposed_answer
        context = {
            **self.admin_site.each_context(request),
            "title": "Review learning item",
            "subtitle": str(item),
            "opts": self.opts,
            "original": item,
            "diff": answer_diff(item.original_answer, str(edited), todesc="edited answer"),
            "review_form": form,
            "review_url": reverse("admin:feedback_learningitem_review", args=[quote(item.pk)]),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/feedback/learningitem/review.html", context)

    def _back_to(self, item: LearningItem) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:feedback_learningitem_change", args=[quote(item.pk)]))

    # --- bulk review

    @admin.action(description="Approve selected items (with their proposed answers)", permissions=["review"])
    def approve_selected(self, request: HttpRequest, queryset: QuerySet[LearningItem]) -> None:
        self._each(request, queryset, learning_item_approve, "Approved")

    @admin.action(description="Reject selected items", permissions=["review"])
    def reject_selected(self, request: HttpRequest, queryset: QuerySet[LearningItem]) -> None:
        self._each(request, queryset, learning_item_reject, "Rejected")

    def _each(
        self,
        request: HttpRequest,
        queryset: QuerySet[LearningItem],
        service: Callable[..., LearningItem],
        verb: str,
    ) -> None:
        """One service call (one transaction) per item; a refusal is reported and the rest go on."""
        actor = _actor(request)
        done = 0
        refused: list[str] = []
        for item in queryset.select_related(None).order_by("created_at", "id").iterator():
            try:
                service(item=item, actor=actor)
            except ServiceError as exc:
                refused.append(f"{item}: {_error_text(exc)}")
                continue
            done += 1
        _report(request, self, f"{verb} {done} item(s).", refused)


# --- the knowledge base ----------------------------------------------------------------------------


def words_diff(before: str, after: str) -> SafeString:
    """``after`` against ``before`` word by word: removed words in ``<del>``, added ones in
    ``<ins>``. Every piece of text is escaped, so tenant text never becomes markup."""
    old, new = before.split(), after.split()
    parts: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if tag == "equal":
            parts.append(escape(" ".join(old[i1:i2])))
            continue
        if i2 > i1:
            parts.append(format_html("<del>{}</del>", " ".join(old[i1:i2])))
        if j2 > j1:
            parts.append(format_html("<ins>{}</ins>", " ".join(new[j1:j2])))
    return mark_safe(" ".join(parts))  # noqa: S308 every part above is escaped


def version_changes(version: KnowledgeEntryVersion, previous: KnowledgeEntryVersion | None) -> SafeString:
    """What ``version`` changed from ``previous``: a word diff of the question and the answer,
    and the tags and status before and after."""
    if previous is None:
        return mark_safe("first version") if version.version == 1 else mark_safe("—")
    parts: list[SafeString] = []
    for label, before, after in (
        ("question", previous.question, version.question),
        ("answer", previous.answer, version.answer),
    ):
        if before != after:
            parts.append(format_html("<strong>{}:</strong> {}", label, words_diff(before, after)))
    if list(previous.tags) != list(version.tags):
        parts.append(
            format_html(
                "<strong>tags:</strong> {} → {}", ", ".join(previous.tags) or "—", ", ".join(version.tags) or "—"
            )
        )
    if previous.active != version.active:
        parts.append(format_html("<strong>status:</strong> {}", "activated" if version.active else "deactivated"))
    if not parts:
        return mark_safe("no change")
    return format_html_join(mark_safe("<br>"), "{}", ((part,) for part in parts))


_HISTORY_COLUMNS = ("version", "when", "by", "why", "status", "tags", "question", "answer", "changes")


def history_table(versions: Sequence[KnowledgeEntryVersion], *, shown: int) -> SafeString:
    """The newest ``shown`` of ``versions`` (given newest first, with one more if there is one,
    so the oldest shown still has a version to compare with), as an HTML table."""
    rows = []
    for index, version in enumerate(versions[:shown]):
        previous = versions[index + 1] if index + 1 < len(versions) else None
        rows.append(
            (
                version.version,
                formats.localize(timezone.localtime(version.created_at)),
                version.changed_by or "—",
                version.change or "—",
                "active" if version.active else "inactive",
                ", ".join(version.tags) or "—",
                version.question,
                Truncator(version.answer).chars(HISTORY_ANSWER_CHARS),
                version_changes(version, previous),
            )
        )
    head = format_html_join("", "<th>{}</th>", ((name,) for name in _HISTORY_COLUMNS))
    body = format_html_join("", "<tr>" + "<td>{}</td>" * len(_HISTORY_COLUMNS) + "</tr>", rows)
    return format_html(
        '<table class="knowledge-history"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>', head, body
    )


_ENTRY_EDITABLE = ("question", "answer", "tags", "active")
_ENTRY_RECORD = ("id", "source", "version", "updated_by", "created_at", "updated_at", "learning_items")
_ENTRY_EMBEDDING = ("embedding_state", "embedding_attempts", "embedding_claimed_at", "embedding_error")


class KnowledgeEntryForm(forms.ModelForm):
    """An entry's editable fields, checked by ``knowledge_fields_clean`` (the services' own
    check), so a blank or too-long text is an error on its field here and the save that follows
    cannot be refused for it. The cleaned values (trimmed; tags lower-cased, deduplicated) are
    what the form shows back and what is saved.

    On a change, each editable field also posts the value the page was loaded with
    (``show_hidden_initial``), so ``changed_data`` means "changed on this page", not "differs
    from the row now": an edit of the tags made on a page opened before someone else changed the
    answer does not write the old answer back."""

    class Meta:
        model = KnowledgeEntry
        fields = ("tenant", "key", "question", "answer", "tags", "active")
        widgets = {
            "question": forms.Textarea(attrs={"rows": 3}),
            "answer": forms.Textarea(attrs={"rows": 8}),
        }
        help_texts = {
            "tenant": "Whose entry it is; fixed once the entry is made.",
            "key": "Optional name, unique per tenant, that an import uses to update this entry; fixed once made.",
            "tags": "Comma-separated.",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.instance._state.adding:
            for name in _ENTRY_EDITABLE:
                if name in self.fields:
                    self.fields[name].show_hidden_initial = True

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        try:
            entry = knowledge_fields_clean(
                question=cleaned.get("question") or "",
                answer=cleaned.get("answer") or "",
                tags=cleaned.get("tags") or [],
            )
        except ServiceError as exc:
            for name, errors in (exc.fields or {}).items():
                if name not in self.errors:  # "required" already said it
                    self.add_error(name if name in self.fields else None, errors)
            return cleaned
        cleaned.update(question=entry.question, answer=entry.answer, tags=list(entry.tags))
        self._check_key(cleaned)
        return cleaned

    def _check_key(self, cleaned: dict[str, Any]) -> None:
        """The key's uniqueness (the service checks it too), as an error on the key: the model's
        conditional unique constraint would report it above the form, unnamed."""
        tenant, key = cleaned.get("tenant"), cleaned.get("key") or ""
        taken = "key" in self.fields and tenant is not None and key
        if taken and KnowledgeEntry.objects.filter(tenant=tenant, key=key).exists():
            self.add_error("key", f"This tenant already has an entry with key {key!r}.")


@admin.register(KnowledgeEntry)
class KnowledgeEntryAdmin(BigTableAdmin):
    """Entries, newest first, searchable by words of the question, answer or key (or an exact id)
    and filterable by tenant, source, status and embedding state. Adding and changing go through
    the services (``save_model``), so each edit is a version; the entry's page shows them."""

    form = KnowledgeEntryForm
    list_display = (
        "short_question",
        "short_answer",
        "tenant",
        "source",
        "active",
        "version",
        "embedding_state",
        "updated_at",
    )
    list_filter = ("tenant", "source", ("active", admin.BooleanFieldListFilter), "embedding_state")
    # Substring matches: a tenant's knowledge base is small next to its messages.
    search_fields = ("question", "answer", "key")
    search_help_text = "Words of the question, answer or key, or an exact entry id."
    search_by_id = True
    list_defer = ("embedding_error",)
    actions = ["activate_selected", "deactivate_selected", "delete_selected"]

    def get_fieldsets(self, request: HttpRequest, obj: KnowledgeEntry | None = None) -> _FieldsetSpec:
        main: _FieldsetSpec = [(None, {"fields": ("tenant", "key", *_ENTRY_EDITABLE)})]
        if obj is None:
            return main
        return [
            *main,
            ("Record", {"fields": _ENTRY_RECORD}),
            ("Embedding", {"fields": _ENTRY_EMBEDDING}),
            (f"History (the newest {HISTORY_SHOWN} versions, newest first)", {"fields": ("history",)}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: KnowledgeEntry | None = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        return ("tenant", "key", *_ENTRY_RECORD, *_ENTRY_EMBEDDING, "history")

    # --- columns and fields

    @admin.display(description="question", ordering="question")
    def short_question(self, obj: KnowledgeEntry) -> str:
        return Truncator(obj.question).chars(80)

    @admin.display(description="answer")
    def short_answer(self, obj: KnowledgeEntry) -> str:
        return Truncator(obj.answer).chars(80)

    @admin.display(description="learning items")
    def learning_items(self, obj: KnowledgeEntry) -> str:
        url = reverse("admin:feedback_learningitem_changelist")
        return format_html('<a href="{}?entry__id__exact={}">the items applied to this entry</a>', url, obj.pk)

    @admin.display(description="versions")
    def history(self, obj: KnowledgeEntry) -> SafeString:
        versions = list(obj.versions.order_by("-version")[: HISTORY_SHOWN + 1])
        return history_table(versions, shown=HISTORY_SHOWN)

    # --- writes, through the services

    def save_model(
        self, request: HttpRequest, obj: KnowledgeEntry, form: forms.ModelForm[KnowledgeEntry], change: bool
    ) -> None:
        """``obj`` carries the form's cleaned values. A change passes only the fields the form
        changed, so an edit of the tags does not write back an answer someone changed since."""
        fields = knowledge_fields_clean(question=obj.question, answer=obj.answer, tags=obj.tags)
        actor = _actor(request)
        if not change:
            saved = knowledge_entry_create(
                tenant=obj.tenant,
                fields=fields,
                actor=actor,
                source=KnowledgeSource.MANUAL,
                key=obj.key,
                active=obj.active,
            )
        else:
            changed = set(form.changed_data)
            saved = knowledge_entry_update(
                entry=obj,
                actor=actor,
                question=fields.question if "question" in changed else None,
                answer=fields.answer if "answer" in changed else None,
                tags=fields.tags if "tags" in changed else None,
                active=obj.active if "active" in changed else None,
            )
        adopt_saved(obj, saved)

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        """A refusal the form could not foresee (another staff member took the key between the
        check and the save) rolls the view's transaction back and comes back as a message."""
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ServiceError as exc:
            self.message_user(request, _error_text(exc), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def delete_model(self, request: HttpRequest, obj: KnowledgeEntry) -> None:
        knowledge_entry_delete(entry=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[KnowledgeEntry]) -> None:
        for entry in queryset.select_related(None).only("id").order_by("id").iterator():
            knowledge_entry_delete(entry=entry)

    @admin.action(description="Activate selected entries", permissions=["change"])
    def activate_selected(self, request: HttpRequest, queryset: QuerySet[KnowledgeEntry]) -> None:
        self._set_active(request, queryset, active=True)

    @admin.action(description="Deactivate selected entries (kept, never returned)", permissions=["change"])
    def deactivate_selected(self, request: HttpRequest, queryset: QuerySet[KnowledgeEntry]) -> None:
        self._set_active(request, queryset, active=False)

    def _set_active(self, request: HttpRequest, queryset: QuerySet[KnowledgeEntry], *, active: bool) -> None:
        """``knowledge_entry_update`` per entry (one transaction, one version each); an entry
        already in that state is left alone, and a refusal is reported while the rest go on."""
        actor, verb = _actor(request), "Activated" if active else "Deactivated"
        changed = 0
        refused: list[str] = []
        chosen = queryset.select_related(None).only("id", "version", "question")
        for entry in chosen.order_by("id").iterator():
            try:
                after = knowledge_entry_update(entry=entry, actor=actor, active=active, change=verb.lower())
            except ServiceError as exc:
                refused.append(f"{entry}: {_error_text(exc)}")
                continue
            changed += after.version != entry.version
        _report(request, self, f"{verb} {changed} entry(ies).", refused)


# --- answer-lookup counters --------------------------------------------------------------------------


def _rate(part: int | None, whole: int | None) -> str:
    return f"{100 * (part or 0) / whole:.1f}%" if whole else "—"


@admin.register(KnowledgeLookupDay)
class KnowledgeLookupDayAdmin(admin.ModelAdmin):
    """Answer lookups per tenant and day, by decision, with the hit rate (answered / all lookups);
    the list also sums the rows it shows (a tenant, a month: filter first). Read-only: the lookups
    count themselves (``knowledge_lookup_count``)."""

    list_display = ("day", "tenant", "answered", "suggested", "unmatched", "lookups", "hit_rate")
    list_filter = ("tenant",)
    list_select_related = ["tenant"]
    date_hierarchy = "day"
    ordering = ("-day", "tenant_id")
    show_facets = admin.ShowFacets.NEVER

    def get_queryset(self, request: HttpRequest) -> QuerySet[KnowledgeLookupDay]:
        total = F("answered") + F("suggested") + F("unmatched")
        return (
            super()
            .get_queryset(request)
            .annotate(
                total=total,
                rate=Cast("answered", FloatField()) / NullIf(total, 0),
            )
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: KnowledgeLookupDay | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: KnowledgeLookupDay | None = None) -> bool:
        return False

    @admin.display(description="lookups", ordering="total")
    def lookups(self, obj: KnowledgeLookupDay) -> int:
        return obj.answered + obj.suggested + obj.unmatched

    @admin.display(description="hit rate", ordering="rate")
    def hit_rate(self, obj: KnowledgeLookupDay) -> str:
        return _rate(obj.answered, self.lookups(obj))

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        if isinstance(context, dict) and "cl" in context:
            context["lookup_totals"] = _lookup_totals(context["cl"].queryset)
        return response


def _lookup_totals(rows: QuerySet[KnowledgeLookupDay]) -> dict[str, Any]:
    """Sums over the listed (filtered) rows, and their hit rate: one aggregate query."""
    sums = rows.order_by().aggregate(answered=Sum("answered"), suggested=Sum("suggested"), unmatched=Sum("unmatched"))
    totals = {name: int(value or 0) for name, value in sums.items()}
    lookups = sum(totals.values())
    return {**totals, "lookups": lookups, "hit_rate": _rate(totals["answered"], lookups)}
