"""The staff admin of clustering: moderators work the clusters here, through the same moderation
services as the API (ARCHITECTURE.md, decision 7).

Nothing on these pages writes a cluster row itself. The cluster's own form is view-only: a save
would write back every column of a row that the worker changes under the tenant's clustering lock,
and could leave ``size`` or ``vector_sum`` stale. Every change is a POST to one of the moderation
views (answer, relabel, reopen, archive, remove a message, split) or a change-list action (archive,
reopen, merge), each calling one ``cluster_*`` service, which locks, recomputes sizes and centroids
from the members and writes the audit log. A service's refusal (``ServiceError``, ``Conflict``,
``NotFound``) becomes an error message on the page, never a 500.

Viewing needs the view (or change) permission on clusters; moderating needs
``clustering.change_cluster``. Clusters are made by assignment and archived, never added or deleted
here. Lists never count a whole table (``EstimatedCountPaginator``), and no page loads the centroid
vector.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast
from uuid import UUID

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote, unquote
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import F, FloatField, Func, IntegerField, Prefetch, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.text import Truncator

from clustering.models import (
    AnswerDelivery,
    Cluster,
    ClusterAction,
    ClusteringPolicy,
    ClusterMembership,
    ClusterStatus,
    DeliveryEndpoint,
)
from clustering.services.moderation import (
    Actor,
    cluster_answer,
    cluster_archive,
    cluster_merge,
    cluster_relabel,
    cluster_remove_message,
    cluster_reopen,
    cluster_split,
)
from clustering.services.webhooks import delivery_endpoint_set, delivery_retry, webhook_url_validate
from conversations.admin import BigTableAdmin, adopt_saved, uuid_or_none
from convo.errors import ServiceError

# The audit entries a cluster's page shows; the audit log list has all of them.
ACTIONS_INLINE_LIMIT = 50
# At most this many clusters are merged by one action (the confirmation page lists them all).
MERGE_MAX_CLUSTERS = 100
# The page's forms that the members table's buttons and checkboxes belong to (HTML ``form``
# attribute): they sit outside the change form, since forms cannot nest.
REMOVE_FORM = "cluster-remove-form"
SPLIT_FORM = "cluster-split-form"
# Moderation views of one cluster: URL name suffix → method.
_MODERATION_VIEWS = ("answer", "relabel", "reopen", "archive", "remove_message", "split")


# --- shared pieces -------------------------------------------------------------------------------


def _can_moderate(request: HttpRequest) -> bool:
    return request.user.has_perm("clustering.change_cluster")


def _can_view_clusters(request: HttpRequest) -> bool:
    return request.user.has_perm("clustering.view_cluster") or _can_moderate(request)


def _actor(request: HttpRequest) -> Actor:
    # admin_view only lets active staff through: the user is a real one.
    return Actor.for_user(cast(AbstractBaseUser, request.user))


def _error_text(exc: ServiceError) -> str:
    """The service's message and its per-field details, as one line for the user."""
    details = [detail for field_errors in (exc.fields or {}).values() for detail in field_errors]
    return " ".join([exc.message, *details])


def _avatar(url: str) -> str:
    """Only http(s) URLs are rendered (the URL comes from the tenant), and without a referrer, so
    the avatar's host does not learn admin URLs (as in conversations/admin.py)."""
    if not url.startswith(("http://", "https://")):
        return ""
    return format_html('<img src="{}" alt="" width="24" height="24" loading="lazy" referrerpolicy="no-referrer">', url)


def _cluster_link(cluster_id: UUID | None, text: str = "") -> str:
    if cluster_id is None:
        return "—"
    url = reverse("admin:clustering_cluster_change", args=[quote(cluster_id)])
    return format_html('<a href="{}">{}</a>', url, text or cluster_id)


def _message_link(message_id: UUID | None) -> str:
    if message_id is None:
        return "—"
    url = reverse("admin:conversations_message_change", args=[quote(message_id)])
    return format_html('<a href="{}">{}</a>', url, message_id)


def _short(value: Any, chars: int = 60) -> str:
    return Truncator(str(value)).chars(chars)


def _describe_change(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A line like "status: open → answered; answer_version: 0 → 1" from an audit record."""
    if isinstance(before.get("target"), dict):  # a merge target's record holds the sources too
        before = before["target"]
    parts = []
    for key, value in after.items():
        if key not in before:
            parts.append(f"{key}: {_short(value)}")
        elif before[key] != value:
            parts.append(f"{key}: {_short(before[key])} → {_short(value)}")
    return "; ".join(parts) or "no change"


# --- a cluster's page: members and audit log ---------------------------------------------------------


class _ReadOnlyInline(admin.TabularInline):
    """An inline that shows rows and never changes them: members move and the log grows only
    through the moderation services."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return _can_view_clusters(request)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class NewestMembersFormSet(BaseInlineFormSet):
    """The newest ``CLUSTER_DETAIL_MESSAGES`` members, with their messages and this cluster's
    deliveries to them: three queries whatever the cluster's size. The slice is taken here because
    the inline's own ``get_queryset`` is filtered by cluster after it returns."""

    def get_queryset(self) -> QuerySet[ClusterMembership]:
        if not hasattr(self, "_queryset"):
            deliveries = (
                AnswerDelivery.objects.filter(cluster_id=self.instance.pk)
                .only("id", "message", "kind", "status", "answer_version")
                .order_by("-answer_version")
            )
            self._queryset = (
                super()
                .get_queryset()
                .select_related("message")
                .defer("message__raw_payload")  # up to 64 KB a message, not shown
                .prefetch_related(
                    Prefetch("message__answer_deliveries", queryset=deliveries, to_attr="cluster_deliveries")
                )[: settings.CLUSTER_DETAIL_MESSAGES]
            )
        return self._queryset


class MembersInline(_ReadOnlyInline):
    """The cluster's newest members, read-only. A moderator also gets, per row, a checkbox for
    "split the ticked messages into a new cluster" and a "remove (re-home)" button; both submit
    forms of their own (``SPLIT_FORM``, ``REMOVE_FORM``) to the moderation views."""

    model = ClusterMembership
    formset = NewestMembersFormSet
    template = "admin/clustering/cluster/members_inline.html"
    ordering = ("-joined_at", "-message_id")
    extra = 0
    can_delete = False
    verbose_name = "member"
    verbose_name_plural = "members (newest first)"
    _columns = ("avatar", "sender", "text", "similarity_shown", "method", "joined_at", "delivery")
    readonly_fields = ("split", *_columns, "remove")

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if _can_moderate(request):
            return ("split", *self._columns, "remove")
        return self._columns

    @admin.display(description="split")
    def split(self, obj: ClusterMembership) -> str:
        return format_html(
            '<input type="checkbox" form="{}" name="message_ids" value="{}" aria-label="split off this message">',
            SPLIT_FORM,
            obj.message_id,
        )

    @admin.display(description="avatar")
    def avatar(self, obj: ClusterMembership) -> str:
        return _avatar(obj.message.sender_avatar_url)

    @admin.display(description="sender")
    def sender(self, obj: ClusterMembership) -> str:
        return obj.message.sender_name

    @admin.display(description="text")
    def text(self, obj: ClusterMembership) -> str:
        return Truncator(obj.message.text).chars(300)

    @admin.display(description="similarity")
    def similarity_shown(self, obj: ClusterMembership) -> str:
        return f"{obj.similarity:.3f}"

    @admin.display(description="delivery")
    def delivery(self, obj: ClusterMembership) -> str:
        """This cluster's latest delivery to the message, if the cluster was ever answered."""
        latest = getattr(obj.message, "cluster_deliveries", [])[:1]
        if not latest:
            return "—"
        return f"{latest[0].status} ({latest[0].kind}, answer v{latest[0].answer_version})"

    @admin.display(description="")
    def remove(self, obj: ClusterMembership) -> str:
        return format_html(
            '<button type="submit" form="{}" name="message_id" value="{}" class="button" '
            'title="Move it to the most similar other cluster, or a new one">remove (re-home)</button>',
            REMOVE_FORM,
            obj.message_id,
        )


class NewestActionsFormSet(BaseInlineFormSet):
    def get_queryset(self) -> QuerySet[ClusterAction]:
        if not hasattr(self, "_queryset"):
            self._queryset = super().get_queryset()[:ACTIONS_INLINE_LIMIT]
        return self._queryset


class ActionLogInline(_ReadOnlyInline):
    """The cluster's audit log, newest first, read-only."""

    model = ClusterAction
    formset = NewestActionsFormSet
    fields = ("created_at", "action", "actor", "what_changed")
    readonly_fields = fields
    ordering = ("-created_at", "-id")
    extra = 0
    can_delete = False
    verbose_name = "audit entry"
    verbose_name_plural = f"audit log (the newest {ACTIONS_INLINE_LIMIT}; see “audit log” for the rest)"

    @admin.display(description="change")
    def what_changed(self, obj: ClusterAction) -> str:
        return _describe_change(obj.before, obj.after)


# --- clusters -------------------------------------------------------------------------------------


_CLUSTER_FIELDS = (
    "id",
    "tenant",
    "space",
    "status",
    "label",
    "representative_text",
    "representative_message",
    "size",
    "centroid",
    "first_message_at",
    "last_message_at",
    "answer",
    "answer_version",
    "answered_by",
    "answered_at",
    "merged_into_link",
    "deliveries",
    "audit_log",
    "created_at",
    "updated_at",
)


@admin.register(Cluster)
class ClusterAdmin(BigTableAdmin):
    """Clusters, biggest first (or by recency: sort on "last message at"). The page of one
    cluster shows its newest members and its audit log, and, for moderators, the moderation
    forms; see the module docstring for why nothing here is a plain model save."""

    change_form_template = "admin/clustering/cluster/change_form.html"
    list_display = ("title", "representative_shown", "size", "status", "tenant", "last_message_at", "answered")
    list_filter = ("tenant", "status")
    search_fields = ("label", "representative_text")
    search_help_text = "Words of the label or representative text, or an exact cluster id."
    search_by_id = True
    list_defer = ("answer",)  # up to CLUSTER_MAX_ANSWER_CHARS a row, not listed
    fields = _CLUSTER_FIELDS
    readonly_fields = _CLUSTER_FIELDS
    inlines = [MembersInline, ActionLogInline]
    actions = ["archive_selected", "reopen_selected", "merge_selected"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Cluster]:
        # The centroid (one float per dimension) is never shown, so never loaded.
        return super().get_queryset(request).select_related("tenant").defer("vector_sum")

    def get_ordering(self, request: HttpRequest) -> tuple[str, ...]:
        # Biggest first, ties in id order: the tail of the (tenant[, status], -size, id) indexes.
        return ("-size", "id")

    # Clusters are made by assignment and archived instead of deleted. The form is view-only:
    # changes go through the moderation views and actions, gated by has_moderate_permission.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Cluster | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Cluster | None = None) -> bool:
        return False

    def has_moderate_permission(self, request: HttpRequest) -> bool:
        return _can_moderate(request)

    # --- columns and fields

    @admin.display(description="cluster", ordering="label")
    def title(self, obj: Cluster) -> str:
        return Truncator(obj.label or str(obj.pk)).chars(80)

    @admin.display(description="representative text")
    def representative_shown(self, obj: Cluster) -> str:
        return Truncator(obj.representative_text).chars(80)

    @admin.display(description="answered?", boolean=True, ordering="answer_version")
    def answered(self, obj: Cluster) -> bool:
        return obj.answer_version > 0

    @admin.display(description="representative message")
    def representative_message(self, obj: Cluster) -> str:
        return _message_link(obj.representative_id)

    @admin.display(description="centroid")
    def centroid(self, obj: Cluster) -> str:
        """Dimensions and the length of the members' mean vector (1.0 when every member has the
        same direction; lower for a looser cluster), computed in the database."""
        row = (
            Cluster.objects.filter(pk=obj.pk)
            .annotate(
                dims=Func(F("vector_sum"), function="vector_dims", output_field=IntegerField()),
                norm=Func(F("vector_sum"), function="vector_norm", output_field=FloatField()),
            )
            .values_list("dims", "norm")
            .first()
        )
        if row is None or not obj.size:
            return "— (no members)"
        dims, norm = row
        return f"{dims} dimensions; length of the members' mean vector {norm / obj.size:.3f}"

    @admin.display(description="merged into")
    def merged_into_link(self, obj: Cluster) -> str:
        return _cluster_link(obj.merged_into_id)

    @admin.display(description="answer deliveries")
    def deliveries(self, obj: Cluster) -> str:
        url = reverse("admin:clustering_answerdelivery_changelist")
        return format_html(
            '<a href="{}?cluster__id__exact={}">all</a> · <a href="{}?cluster__id__exact={}&amp;status__exact=pending">'
            'pending</a> · <a href="{}?cluster__id__exact={}&amp;status__exact=failed">failed</a>',
            url,
            obj.pk,
            url,
            obj.pk,
            url,
            obj.pk,
        )

    @admin.display(description="audit log")
    def audit_log(self, obj: Cluster) -> str:
        url = reverse("admin:clustering_clusteraction_changelist")
        return format_html('<a href="{}?cluster__id__exact={}">every action on this cluster</a>', url, obj.pk)

    # --- the page of one cluster, and its moderation views

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        moderate = self.has_moderate_permission(request)
        context: dict[str, Any] = {
            **(extra_context or {}),
            "can_moderate": moderate,
            "members_shown": settings.CLUSTER_DETAIL_MESSAGES,
            "answer_max_chars": settings.CLUSTER_MAX_ANSWER_CHARS,
            "remove_form_id": REMOVE_FORM,
            "split_form_id": SPLIT_FORM,
        }
        if moderate:
            context["moderation_urls"] = {
                name: reverse(f"admin:clustering_cluster_{name}", args=[object_id]) for name in _MODERATION_VIEWS
            }
        return super().change_view(request, object_id, form_url, extra_context=context)

    def get_urls(self) -> list[URLPattern]:
        moderation = [
            path(
                f"<path:object_id>/{name.replace('_', '-')}/",
                self.admin_site.admin_view(getattr(self, f"{name}_view")),  # staff only, CSRF-protected
                name=f"clustering_cluster_{name}",
            )
            for name in _MODERATION_VIEWS
        ]
        return [*moderation, *super().get_urls()]

    def answer_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        def act(cluster: Cluster, actor: Actor) -> str:
            done = cluster_answer(cluster=cluster, answer=request.POST.get("answer", ""), actor=actor)
            return f"Answered (answer version {done.answer_version}): every member gets this answer."

        return self._moderate(request, object_id, act)

    def relabel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        def act(cluster: Cluster, actor: Actor) -> str:
            done = cluster_relabel(cluster=cluster, label=request.POST.get("label", ""), actor=actor)
            return f"Relabelled “{done.label}”."

        return self._moderate(request, object_id, act)

    def reopen_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        def act(cluster: Cluster, actor: Actor) -> str:
            cluster_reopen(cluster=cluster, actor=actor)
            return "Reopened: new members no longer get the answer."

        return self._moderate(request, object_id, act)

    def archive_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        def act(cluster: Cluster, actor: Actor) -> str:
            cluster_archive(cluster=cluster, actor=actor)
            return "Archived: the cluster takes no new members."

        return self._moderate(request, object_id, act)

    def remove_message_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        def act(cluster: Cluster, actor: Actor) -> str:
            message_id = uuid_or_none(request.POST.get("message_id", ""))
            if message_id is None:
                raise ServiceError("Choose a message to remove.")
            home = cluster_remove_message(cluster=cluster, message_id=message_id, actor=actor)
            link = _cluster_link(home.pk, str(home))
            return format_html("Moved the message to {} (now {} members).", link, home.size)

        return self._moderate(request, object_id, act)

    def split_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        def act(cluster: Cluster, actor: Actor) -> str:
            chosen = request.POST.getlist("message_ids")
            message_ids = [uuid_or_none(value) for value in chosen]
            if any(message_id is None for message_id in message_ids):
                raise ServiceError("Not message ids.", fields={"message_ids": ["Choose messages from the list."]})
            split_off = cluster_split(
                cluster=cluster,
                message_ids=[message_id for message_id in message_ids if message_id is not None],
                label=request.POST.get("label", ""),
                actor=actor,
            )
            return format_html(
                "Split {} message(s) off into {}.", split_off.size, _cluster_link(split_off.pk, str(split_off))
            )

        return self._moderate(request, object_id, act)

    def _moderate(self, request: HttpRequest, object_id: str, act: Callable[[Cluster, Actor], str]) -> HttpResponse:
        """POST only, moderators only; run ``act`` (one service call) and come back to the cluster
        with its message, or with the service's refusal as an error message."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_moderate_permission(request):
            raise PermissionDenied
        cluster = self.get_object(request, unquote(object_id))
        if cluster is None:
            self.message_user(request, "That cluster does not exist.", messages.WARNING)
            return HttpResponseRedirect(reverse("admin:clustering_cluster_changelist"))
        try:
            done = act(cluster, _actor(request))
        except ServiceError as exc:
            self.message_user(request, _error_text(exc), messages.ERROR)
        else:
            self.message_user(request, done, messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:clustering_cluster_change", args=[quote(cluster.pk)]))

    # --- change-list actions

    @admin.action(description="Archive selected clusters", permissions=["moderate"])
    def archive_selected(self, request: HttpRequest, queryset: QuerySet[Cluster]) -> None:
        self._each(request, queryset, cluster_archive, "Archived")

    @admin.action(description="Reopen selected clusters", permissions=["moderate"])
    def reopen_selected(self, request: HttpRequest, queryset: QuerySet[Cluster]) -> None:
        self._each(request, queryset, cluster_reopen, "Reopened")

    def _each(
        self, request: HttpRequest, queryset: QuerySet[Cluster], service: Callable[..., Cluster], verb: str
    ) -> None:
        """One service call (one transaction) per cluster; a refusal is reported and the rest go on."""
        actor = _actor(request)
        changed = 0
        refused: list[str] = []
        chosen = queryset.select_related(None).only("id", "tenant_id", "status", "label", "representative_text")
        for cluster in chosen.order_by("id").iterator():
            try:
                after = service(cluster=cluster, actor=actor)
            except ServiceError as exc:
                refused.append(f"{cluster}: {_error_text(exc)}")
                continue
            changed += after.status != cluster.status
        self.message_user(request, f"{verb} {changed} cluster(s).", messages.SUCCESS)
        if refused:
            more = f" (and {len(refused) - 5} more)" if len(refused) > 5 else ""
            self.message_user(request, f"Not done: {' · '.join(refused[:5])}{more}", messages.ERROR)

    @admin.action(
        description="Merge selected clusters into one (choose which; the biggest by default)", permissions=["moderate"]
    )
    def merge_selected(self, request: HttpRequest, queryset: QuerySet[Cluster]) -> TemplateResponse | None:
        """First a page to choose the target (the biggest is preselected), then ``cluster_merge``."""
        chosen = list(queryset.order_by("-size", "id")[: MERGE_MAX_CLUSTERS + 1])
        if len(chosen) < 2:
            self.message_user(request, "Choose at least two clusters to merge.", messages.ERROR)
            return None
        if len(chosen) > MERGE_MAX_CLUSTERS:
            self.message_user(request, f"Merge at most {MERGE_MAX_CLUSTERS} clusters at once.", messages.ERROR)
            return None
        if request.POST.get("post") == "yes":
            target_id = uuid_or_none(request.POST.get("target", ""))
            target = next((cluster for cluster in chosen if cluster.pk == target_id), None)
            if target is None:
                self.message_user(request, "Choose the cluster to merge into.", messages.ERROR)
                return None
            sources = [cluster for cluster in chosen if cluster.pk != target.pk]
            try:
                merged = cluster_merge(target=target, sources=sources, actor=_actor(request))
            except ServiceError as exc:
                self.message_user(request, _error_text(exc), messages.ERROR)
                return None
            self.message_user(
                request,
                format_html(
                    "Merged {} cluster(s) into {} (now {} members).",
                    len(sources),
                    _cluster_link(merged.pk, str(merged)),
                    merged.size,
                ),
                messages.SUCCESS,
            )
            return None
        if len({cluster.tenant_id for cluster in chosen}) > 1:
            # cluster_merge refuses this too; saying so before the confirmation page is kinder.
            self.message_user(request, "Clusters of different tenants cannot be merged.", messages.ERROR)
            return None
        request.current_app = self.admin_site.name
        context = {
            **self.admin_site.each_context(request),
            "title": "Merge clusters",
            "subtitle": None,
            "opts": self.opts,
            "clusters": chosen,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "default_target": next((c for c in chosen if c.status != ClusterStatus.ARCHIVED), chosen[0]),
        }
        return TemplateResponse(request, "admin/clustering/cluster/merge_confirmation.html", context)


# --- the audit log ----------------------------------------------------------------------------------


@admin.register(ClusterAction)
class ClusterActionAdmin(BigTableAdmin):
    """Every moderator action, newest first; read-only (it is the record)."""

    list_display = ("created_at", "action", "cluster_link", "tenant", "actor", "what_changed")
    list_filter = ("action", "tenant")
    fields = ("id", "created_at", "tenant", "cluster_link", "action", "actor", "actor_user", "before", "after")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ClusterAction | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ClusterAction | None = None) -> bool:
        return False

    @admin.display(description="cluster", ordering="cluster_id")
    def cluster_link(self, obj: ClusterAction) -> str:
        return _cluster_link(obj.cluster_id)

    @admin.display(description="change")
    def what_changed(self, obj: ClusterAction) -> str:
        return _describe_change(obj.before, obj.after)


# --- answer deliveries and where they go --------------------------------------------------------------


_DELIVERY_FIELDS = (
    "id",
    "tenant",
    "cluster_link",
    "message_link",
    "kind",
    "answer_version",
    "answer",
    "status",
    "attempts",
    "next_attempt_at",
    "claimed_at",
    "last_error",
    "delivered_at",
    "created_at",
)


@admin.register(AnswerDelivery)
class AnswerDeliveryAdmin(BigTableAdmin):
    """Deliveries are made by answering and joining, and sent by the webhook worker: read-only."""

    list_display = (
        "id",
        "created_at",
        "kind",
        "status",
        "tenant",
        "cluster_link",
        "message_link",
        "answer_version",
        "attempts",
        "next_attempt_at",
        "delivered_at",
        "short_error",
    )
    list_filter = ("status", "kind", "tenant")
    list_defer = ("answer",)
    fields = _DELIVERY_FIELDS
    readonly_fields = _DELIVERY_FIELDS
    actions = ["retry_selected"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AnswerDelivery | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AnswerDelivery | None = None) -> bool:
        return False

    @admin.display(description="cluster", ordering="cluster_id")
    def cluster_link(self, obj: AnswerDelivery) -> str:
        return _cluster_link(obj.cluster_id)

    @admin.display(description="message", ordering="message_id")
    def message_link(self, obj: AnswerDelivery) -> str:
        return _message_link(obj.message_id)

    @admin.display(description="last error")
    def short_error(self, obj: AnswerDelivery) -> str:
        return _short(obj.last_error, 80) if obj.last_error else ""

    def has_retry_permission(self, request: HttpRequest) -> bool:
        # The rows are read-only here; the change permission is what allows sending one again.
        return request.user.has_perm("clustering.change_answerdelivery")

    @admin.action(description="Retry selected failed deliveries", permissions=["retry"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[AnswerDelivery]) -> None:
        """``delivery_retry`` per delivery (one transaction each); a refusal is reported and the rest go on."""
        retried = 0
        refused: list[str] = []
        for delivery in queryset.select_related(None).only("id", "status").order_by("id").iterator():
            try:
                delivery_retry(delivery=delivery)
            except ServiceError as exc:
                refused.append(f"{delivery.pk}: {_error_text(exc)}")
                continue
            retried += 1
        self.message_user(request, f"Queued {retried} delivery(ies) to be sent again.", messages.SUCCESS)
        if refused:
            more = f" (and {len(refused) - 5} more)" if len(refused) > 5 else ""
            self.message_user(request, f"Not retried: {' · '.join(refused[:5])}{more}", messages.ERROR)


def _endpoint_formfield(field: models.Field[Any, Any], **kwargs: Any) -> forms.Field | None:
    # A URL typed without a scheme is https (Django 6's default; 5.x warns without the choice).
    if isinstance(field, models.URLField):
        kwargs["assume_scheme"] = "https"
    return field.formfield(**kwargs)


class DeliveryEndpointForm(forms.ModelForm):
    class Meta:
        model = DeliveryEndpoint
        fields = ("tenant", "url", "is_active")
        formfield_callback = _endpoint_formfield

    def clean_url(self) -> str:
        """The service's own URL check, as a field error (it checks again when saving)."""
        url = str(self.cleaned_data["url"])
        try:
            return webhook_url_validate(url)
        except ServiceError as exc:
            raise forms.ValidationError(_error_text(exc)) from exc


@admin.register(DeliveryEndpoint)
class DeliveryEndpointAdmin(admin.ModelAdmin):
    """A tenant's webhook, made and changed by ``delivery_endpoint_set``. Its signing secret is
    shown once, in a message after it is made (on creation, or by "rotate the secret", after which
    the old one stops working); afterwards only its last characters are shown. An endpoint is
    paused (``is_active``) rather than deleted here: either way the tenant pulls its deliveries."""

    form = DeliveryEndpointForm
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    list_display = ("tenant", "url", "is_active", "created_at")
    list_filter = ("is_active",)
    list_select_related = ["tenant"]
    search_fields = ("url", "tenant__name")
    actions = ["rotate_secret"]

    def get_fields(self, request: HttpRequest, obj: DeliveryEndpoint | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("tenant", "url", "is_active")
        return ("tenant", "url", "is_active", "secret_hint", "created_at")

    def get_readonly_fields(self, request: HttpRequest, obj: DeliveryEndpoint | None = None) -> tuple[str, ...]:
        return () if obj is None else ("tenant", "secret_hint", "created_at")

    def has_delete_permission(self, request: HttpRequest, obj: DeliveryEndpoint | None = None) -> bool:
        return False

    def save_model(
        self, request: HttpRequest, obj: DeliveryEndpoint, form: forms.ModelForm[DeliveryEndpoint], change: bool
    ) -> None:
        """Through ``delivery_endpoint_set``; ``obj`` carries the form's values."""
        done = delivery_endpoint_set(tenant=obj.tenant, url=obj.url, is_active=obj.is_active)
        adopt_saved(obj, done.endpoint)
        if done.secret:
            _show_secret_once(request, done.endpoint, done.secret)

    @admin.display(description="signing secret")
    def secret_hint(self, obj: DeliveryEndpoint) -> str:
        return f"…{obj.secret[-4:]} (shown in full only when made)" if obj.secret else "—"

    @admin.action(description="Rotate the signing secret (one endpoint at a time)", permissions=["change"])
    def rotate_secret(self, request: HttpRequest, queryset: QuerySet[DeliveryEndpoint]) -> None:
        chosen = list(queryset[:2])
        if len(chosen) != 1:
            self.message_user(request, "Rotate the secret of one endpoint at a time.", messages.ERROR)
            return
        endpoint = chosen[0]
        try:
            done = delivery_endpoint_set(
                tenant=endpoint.tenant, url=endpoint.url, is_active=endpoint.is_active, rotate_secret=True
            )
        except ServiceError as exc:
            self.message_user(request, _error_text(exc), messages.ERROR)
            return
        if done.secret:
            _show_secret_once(request, done.endpoint, done.secret)


def _show_secret_once(request: HttpRequest, endpoint: DeliveryEndpoint, secret: str) -> None:
    messages.warning(
        request,
        f"The signing secret of {endpoint.url} is {secret} — give it to the chat backend now: "
        "it will not be shown again.",
    )


# --- per-tenant thresholds ------------------------------------------------------------------------------


class ClusteringPolicyForm(forms.ModelForm):
    """The database's range checks as field errors (a failed constraint would be a form-wide one)."""

    similarity_threshold = forms.FloatField(required=False, min_value=0, max_value=1)
    warmup_similarity_threshold = forms.FloatField(required=False, min_value=0, max_value=1)
    text_similarity_threshold = forms.FloatField(required=False, min_value=0, max_value=100)
    short_message_chars = forms.IntegerField(required=False, min_value=0, max_value=100_000)

    class Meta:
        model = ClusteringPolicy
        fields = (
            "tenant",
            "similarity_threshold",
            "warmup_similarity_threshold",
            "text_similarity_threshold",
            "short_message_chars",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        defaults = {
            "similarity_threshold": (
                f"Centred similarity, 0 to 1, a message needs to join a cluster (docs/clustering.md). "
                f"Empty: the setting ({settings.CLUSTER_SIMILARITY_THRESHOLD})."
            ),
            "warmup_similarity_threshold": (
                f"Cosine similarity to a cluster's centroid, 0 to 1, needed while the tenant has fewer than "
                f"{settings.CLUSTER_CENTERING_MIN_MESSAGES} messages. Empty: the setting "
                f"({settings.CLUSTER_WARMUP_SIMILARITY_THRESHOLD})."
            ),
            "text_similarity_threshold": (
                f"Wording similarity, 0 to 100, that lets a short message join. Empty: the setting "
                f"({settings.CLUSTER_TEXT_SIMILARITY_THRESHOLD})."
            ),
            "short_message_chars": (
                f"Messages up to this many characters are also compared by wording. Empty: the setting "
                f"({settings.CLUSTER_SHORT_MESSAGE_CHARS})."
            ),
        }
        for name, help_text in defaults.items():
            if name in self.fields:
                self.fields[name].help_text = f"{help_text} Applies to messages clustered from now on."


@admin.register(ClusteringPolicy)
class ClusteringPolicyAdmin(admin.ModelAdmin):
    """A tenant's own clustering thresholds (read by assignment for every batch)."""

    form = ClusteringPolicyForm
    list_display = (
        "tenant",
        "similarity_threshold",
        "warmup_similarity_threshold",
        "text_similarity_threshold",
        "short_message_chars",
    )
    list_select_related = ["tenant"]

    def get_readonly_fields(self, request: HttpRequest, obj: ClusteringPolicy | None = None) -> tuple[str, ...]:
        return () if obj is None else ("tenant",)
