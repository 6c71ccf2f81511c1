"""The staff admin: browse tenants, API keys, conversations and messages.

Three rules shape it. Every write goes through a service (ARCHITECTURE.md, decision 7): staff may
change a conversation's status and summary (``conversation_update``), soft-delete conversations
(``conversation_soft_delete``), and make and revoke keys (``services.tenants``); nothing else is
editable, nothing is hard-deleted. Soft-deleted rows are hidden unless asked for, as in the API.
And no page costs time in proportion to the table: the conversation and message lists never run
``COUNT(*)`` over the table (``EstimatedCountPaginator``), never compute facet counts, walk the
primary key for their default order, and search identifiers by equality, never text by LIKE.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

import pydantic
from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import connections, models
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey

from conversations.models import Conversation, EmbeddingCacheStats, Message, Tenant, TenantAPIKey
from conversations.payloads import ConversationUpdateIn
from conversations.services.conversations import conversation_soft_delete, conversation_update
from conversations.services.tenants import (
    tenant_api_key_create,
    tenant_api_key_revoke,
    tenant_create,
    tenant_update,
)

if TYPE_CHECKING:
    from django.contrib.admin.filters import _ListFilterChoices

admin.site.site_header = "convo admin"
admin.site.site_title = "convo admin"

# The library registers its own key model; nothing here authenticates with it (the API reads
# TenantAPIKey only), so a key made on that page would look valid and never work.
admin.site.unregister(APIKey)

# How many messages a conversation's change form shows; the message list has all of them.
MESSAGES_INLINE_LIMIT = 100


# --- shared pieces -------------------------------------------------------------------------------


class EstimatedCountPaginator(Paginator):
    """A paginator that never counts a whole big table.

    The change list asks its paginator for ``count`` on every page view, and ``COUNT(*)`` reads
    every matching row: seconds per click on a table of millions. Here the count is exact up to
    ``exact_up_to`` rows (the counting query stops after ``exact_up_to + 1`` rows, so its cost is
    bounded), and beyond that it is PostgreSQL's planner estimate for the same query: EXPLAIN
    plans it without running it (for the unfiltered table that is ``pg_class.reltuples`` scaled to
    the table's current size). An estimate can be off either way: the last pages may come out
    empty, or rows past the estimate are reachable only by filtering. ``count_is_estimate`` lets
    the pagination template say "about".
    """

    exact_up_to = 10_000
    count_is_estimate = False

    @cached_property
    def count(self) -> int:
        # Ordering and joins to display columns change nothing in a count and may cost a sort.
        queryset = cast(QuerySet[Any], self.object_list).order_by().select_related(None)
        counted = queryset[: self.exact_up_to + 1].count()
        if counted <= self.exact_up_to:
            return counted
        self.count_is_estimate = True
        return max(counted, _planner_row_estimate(queryset))


def _planner_row_estimate(queryset: QuerySet[Any]) -> int:
    """PostgreSQL's estimate of how many rows ``queryset`` returns (EXPLAIN does not run it)."""
    sql, params = queryset.query.sql_with_params()
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        row = cursor.fetchone()
    plan = row[0] if row else [{"Plan": {"Plan Rows": 0}}]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


class BigTableAdmin(admin.ModelAdmin):
    """Change list settings for tables that grow without bound.

    The default order is the primary key, newest first: ids are UUIDv7, which sort by creation
    time (except ids a client chose with PUT), and walking the primary key index needs no sort,
    whereas ``-created_at`` has no index of its own and would sort the whole table per page.
    """

    ordering = ("-id",)
    paginator = EstimatedCountPaginator
    show_full_result_count = False  # would run COUNT(*) over the unfiltered table
    show_facets = admin.ShowFacets.NEVER  # a facet is a count per filter choice
    list_select_related = ["tenant"]
    # Large columns the list does not show: not loaded for a page of 100 rows.
    list_defer: tuple[str, ...] = ()
    # A search term that is a UUID also finds the row with that primary key.
    search_by_id = False

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        found, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        row_id = uuid_or_none(search_term) if self.search_by_id else None
        if row_id is not None:
            found = found | queryset.filter(pk=row_id)
        return found, may_have_duplicates

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return _DeferringChangeList


class _DeferringChangeList(ChangeList):
    """A change list that leaves out its admin's ``list_defer`` columns."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet[Any]:
        deferred = cast(BigTableAdmin, self.model_admin).list_defer
        return super().get_queryset(request, exclude_parameters).defer(*deferred)


class DeletedFilter(admin.SimpleListFilter):
    """Soft-deleted rows are hidden unless asked for: "live" is what no choice means, so the
    default list shows what the API shows. ``deleted_at_field`` is the path to ``deleted_at``."""

    title = "deleted"
    parameter_name = "deleted"
    deleted_at_field = "deleted_at"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [("live", "Live"), ("deleted", "Deleted"), ("all", "All")]

    def value(self) -> str:
        value = super().value()
        return value if value in {"deleted", "all"} else "live"

    def choices(self, changelist: ChangeList) -> Iterator[_ListFilterChoices]:
        # Django's own first choice is "All" without a parameter, which here would mean "live".
        for lookup, title in self.lookup_choices:
            yield {
                "selected": self.value() == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "all":
            return queryset
        return queryset.filter(**{f"{self.deleted_at_field}__isnull": self.value() == "live"})


class ConversationDeletedFilter(DeletedFilter):
    """Messages are deleted with their conversation."""

    title = "conversation deleted"
    deleted_at_field = "conversation__deleted_at"


def uuid_or_none(value: str) -> UUID | None:
    """The UUID a search term or form value spells, or None."""
    try:
        return UUID(value.strip())
    except (ValueError, AttributeError):
        return None


def adopt_saved(obj: models.Model, saved: models.Model) -> None:
    """Make the admin's unsaved ``obj`` the row a service just saved: the admin logs the change
    and redirects with ``obj``, which the service never saw."""
    for field in saved._meta.concrete_fields:
        setattr(obj, field.attname, getattr(saved, field.attname))
    obj._state.adding = False
    obj._state.db = saved._state.db


# --- tenants and keys ------------------------------------------------------------------------------


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    """Tenants are made with ``tenant_create``. They are deactivated, never deleted here: a delete
    cascades to every conversation and message of the tenant (and its confirmation page would
    list them all). Deactivation reaches each API process within ``CONVO_API_KEY_CACHE_SECONDS``.
    The slug is fixed once made: it names the tenant in logs and throttling."""

    list_display = ("name", "slug", "is_active", "created_at")
    list_filter = ("is_active",)
    search_fields = ("name", "slug")

    def get_fields(self, request: HttpRequest, obj: Tenant | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("name", "slug")
        return ("name", "slug", "is_active", "created_at", "api_keys")

    def get_readonly_fields(self, request: HttpRequest, obj: Tenant | None = None) -> tuple[str, ...]:
        return () if obj is None else ("slug", "created_at", "api_keys")

    def has_delete_permission(self, request: HttpRequest, obj: Tenant | None = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Tenant, form: forms.ModelForm[Tenant], change: bool) -> None:
        if change:
            tenant_update(tenant=obj, name=obj.name, is_active=obj.is_active)
        else:
            adopt_saved(obj, tenant_create(name=obj.name, slug=obj.slug))

    @admin.display(description="API keys")
    def api_keys(self, obj: Tenant) -> SafeString:
        keys = reverse("admin:conversations_tenantapikey_changelist")
        add = reverse("admin:conversations_tenantapikey_add")
        return format_html(
            '<a href="{}?tenant__id__exact={}">{} keys</a> · <a href="{}?tenant={}">make a key</a>',
            keys,
            obj.pk,
            obj.api_keys.count(),
            add,
            obj.pk,
        )


@admin.register(TenantAPIKey)
class TenantAPIKeyAdmin(APIKeyModelAdmin):
    """Keys are made by ``tenant_api_key_create`` and shown once, in a message after saving; only
    a hash is stored, and no field shows it. A key is revoked (``tenant_api_key_revoke``), never
    deleted, so what a key did stays attributable. The library's primary key embeds the hash, so
    the change page URLs carry it: harmless for 32 random characters, but it is not a secret to
    guard there either."""

    model = TenantAPIKey
    # The library annotates these as fixed-length tuples, hence the ignores.
    list_display = ("prefix", "name", "tenant", "created", "expiry_date", "_has_expired", "revoked")  # type: ignore[assignment]
    list_filter = ("tenant", "revoked", "created")  # type: ignore[assignment]
    list_select_related = ["tenant"]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is None:
            return ("tenant", "name")  # the service takes no more; set an expiry afterwards
        return ("tenant", "prefix", "name", "created", "expiry_date", "revoked")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        return ("tenant", "created", *super().get_readonly_fields(request, obj))

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Any, form: Any = None, change: bool = False) -> None:
        if change:
            metadata = [name for name in form.changed_data if name != "revoked"]  # name, expiry_date
            if metadata:
                obj.save(update_fields=metadata)
            if "revoked" in form.changed_data and obj.revoked:
                tenant_api_key_revoke(api_key=obj)
            return
        api_key, key = tenant_api_key_create(tenant=obj.tenant, name=obj.name)
        adopt_saved(obj, api_key)
        messages.warning(
            request,
            f"The API key for {obj.name} is {key} — store it somewhere safe: it will not be shown again.",
        )


# --- conversations and messages --------------------------------------------------------------------


class _MessageDisplay:
    """Columns shared by the message list and the conversation's messages inline."""

    @admin.display(description="avatar")
    def avatar(self, obj: Message) -> str:
        """Only http(s) URLs are rendered (the URL comes from the tenant), and without a referrer,
        so the avatar's host does not learn admin URLs."""
        url = obj.sender_avatar_url
        if not url.startswith(("http://", "https://")):
            return ""
        return format_html(
            '<img src="{}" alt="" width="24" height="24" loading="lazy" referrerpolicy="no-referrer">', url
        )

    @admin.display(description="text")
    def short_text(self, obj: Message) -> str:
        return Truncator(obj.text).chars(80)


class FirstMessagesFormSet(BaseInlineFormSet):
    """Only the first ``MESSAGES_INLINE_LIMIT`` messages: a conversation may hold thousands, and
    its change form must neither load nor render them all. The slice is taken here because the
    inline's own ``get_queryset`` is filtered by conversation after it returns."""

    def get_queryset(self) -> QuerySet[Message]:
        if not hasattr(self, "_queryset"):
            self._queryset = super().get_queryset()[:MESSAGES_INLINE_LIMIT]
        return self._queryset


class MessageInline(_MessageDisplay, admin.TabularInline):
    """The conversation's first messages, oldest first, read-only."""

    model = Message
    formset = FirstMessagesFormSet
    fields = ("role", "sender_name", "avatar", "short_text", "created_at", "embedding_state")
    readonly_fields = fields
    ordering = ("created_at", "id")
    extra = 0
    can_delete = False
    show_change_link = True
    verbose_name_plural = f"messages (the first {MESSAGES_INLINE_LIMIT}; see “all messages” for the rest)"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Message]:
        return super().get_queryset(request).defer("raw_payload")  # up to 64 KB a message, not shown

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _conversation_changes(form: forms.ModelForm[Conversation]) -> ConversationUpdateIn:
    """What the staff member changed, as the API's PATCH payload (so the API's limits apply)."""
    return ConversationUpdateIn(
        **{name: form.cleaned_data[name] for name in form.changed_data if name in form.cleaned_data}
    )


class ConversationAdminForm(forms.ModelForm):
    """Status and summary, validated like a PATCH and checked against the model's constraints,
    so that reopening a conversation whose session has another active conversation is a form
    error here rather than a failed save."""

    class Meta:
        model = Conversation
        fields = ("status", "summary")

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        try:
            changes = _conversation_changes(self)
        except pydantic.ValidationError as exc:
            for error in exc.errors():
                field = str(error["loc"][0]) if error["loc"] else None
                self.add_error(field if field in self.fields else None, error["msg"])
            return cleaned
        candidate = copy.copy(self.instance)
        for name, value in changes.model_dump(exclude_unset=True).items():
            setattr(candidate, name, value)
        try:
            candidate.validate_constraints()
        except ValidationError as exc:
            self.add_error(None, exc)
        return cleaned


_CONVERSATION_FIELDS = (
    "id",
    "tenant",
    "external_id",
    "external_user_id",
    "channel",
    "session_id",
    "status",
    "summary",
    "transcript",
    "metadata",
    "all_messages",
    "embedding_state",
    "embedding_attempts",
    "embedding_error",
    "created_at",
    "updated_at",
    "last_message_at",
    "deleted_at",
    "ingest_fingerprint",
)
_CONVERSATION_EDITABLE = ("status", "summary")


@admin.register(Conversation)
class ConversationAdmin(BigTableAdmin):
    """Conversations arrive through the API, so there is no "add"; staff change status and
    summary, and soft-delete. A soft-deleted conversation is read-only."""

    form = ConversationAdminForm
    list_display = (
        "id",
        "tenant",
        "external_user_id",
        "channel",
        "status",
        "embedding_state",
        "created_at",
        "last_message_at",
        "is_deleted",
    )
    list_filter = ("tenant", "channel", "status", "embedding_state", DeletedFilter)
    search_fields = ("external_user_id__exact", "session_id__exact", "external_id__exact")
    search_help_text = "An exact conversation id, user id, session id or external id."
    list_defer = ("transcript", "summary", "metadata")
    fields = _CONVERSATION_FIELDS
    readonly_fields = tuple(name for name in _CONVERSATION_FIELDS if name not in _CONVERSATION_EDITABLE)
    inlines = [MessageInline]
    actions = ["soft_delete_selected"]
    search_by_id = True

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Conversation | None = None) -> bool:
        return False  # soft_delete_selected instead; this also drops Django's delete_selected

    def has_change_permission(self, request: HttpRequest, obj: Conversation | None = None) -> bool:
        if obj is not None and obj.deleted_at is not None:
            return False
        return super().has_change_permission(request, obj)

    def save_model(
        self, request: HttpRequest, obj: Conversation, form: forms.ModelForm[Conversation], change: bool
    ) -> None:
        """Through ``conversation_update``, which re-queues embedding when the summary changed.
        It is handed the stored row: ``obj`` already carries the form's values, so compared with
        them the service would see nothing to change."""
        stored = Conversation.objects.get(pk=obj.pk)
        conversation_update(conversation=stored, changes=_conversation_changes(form))

    @admin.action(description="Soft-delete selected conversations", permissions=["change"])
    def soft_delete_selected(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
        # Only what the service and the log entry need (the list's queryset joins the tenant).
        live = (
            queryset.filter(deleted_at__isnull=True)
            .select_related(None)
            .only("id", "external_user_id", "channel", "created_at")
        )
        deleted = 0
        for conversation in live.iterator():
            conversation_soft_delete(conversation=conversation)
            self.log_change(request, conversation, "Soft-deleted.")
            deleted += 1
        self.message_user(request, f"Soft-deleted {deleted} conversation(s).", messages.SUCCESS)

    @admin.display(description="deleted", boolean=True, ordering="deleted_at")
    def is_deleted(self, obj: Conversation) -> bool:
        return obj.deleted_at is not None

    @admin.display(description="all messages")
    def all_messages(self, obj: Conversation) -> SafeString:
        url = reverse("admin:conversations_message_changelist")
        return format_html('<a href="{}?conversation__id__exact={}&amp;deleted=all">message list</a>', url, obj.pk)


_MESSAGE_FIELDS = (
    "id",
    "tenant",
    "conversation",
    "role",
    "sender_name",
    "avatar",
    "sender_avatar_url",
    "text",
    "external_id",
    "sent_at",
    "created_at",
    "embedding_state",
    "embedding_attempts",
    "embedding_error",
    "raw_payload",
)


@admin.register(Message)
class MessageAdmin(_MessageDisplay, BigTableAdmin):
    """Messages are read-only: they arrive through the API and leave with their conversation."""

    list_display = (
        "id",
        "tenant",
        "conversation_link",
        "role",
        "sender_name",
        "short_text",
        "embedding_state",
        "created_at",
    )
    list_filter = ("tenant", "role", "embedding_state", ConversationDeletedFilter)
    # Searching message text would scan the biggest table with LIKE; identifiers only.
    search_fields = ("external_id__exact", "^sender_name")
    search_help_text = "An exact message or conversation id, external id, or the start of a sender name."
    list_defer = ("raw_payload",)
    fields = _MESSAGE_FIELDS
    readonly_fields = _MESSAGE_FIELDS

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Message], search_term: str
    ) -> tuple[QuerySet[Message], bool]:
        """A UUID finds the message with that id and the messages of the conversation with it."""
        found, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        some_id = uuid_or_none(search_term)
        if some_id is not None:
            found = found | queryset.filter(models.Q(pk=some_id) | models.Q(conversation_id=some_id))
        return found, may_have_duplicates

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        return False

    @admin.display(description="conversation", ordering="conversation_id")
    def conversation_link(self, obj: Message) -> SafeString:
        url = reverse("admin:conversations_conversation_change", args=[obj.conversation_id])
        return format_html('<a href="{}">{}</a>', url, obj.conversation_id)


@admin.register(EmbeddingCacheStats)
class EmbeddingCacheStatsAdmin(admin.ModelAdmin):
    """The embedding cache's hits and misses per model and day (written by the worker per batch)."""

    list_display = ("day", "model_id", "hot_hits", "durable_hits", "misses", "hit_rate")
    list_filter = ("model_id",)
    ordering = ("-day", "model_id")

    @admin.display(description="hit rate")
    def hit_rate(self, obj: EmbeddingCacheStats) -> str:
        hits = obj.hot_hits + obj.durable_hits
        total = hits + obj.misses
        return f"{hits / total:.1%}" if total else "-"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: EmbeddingCacheStats | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: EmbeddingCacheStats | None = None) -> bool:
        return False
