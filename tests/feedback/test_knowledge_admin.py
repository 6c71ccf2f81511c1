"""The knowledge base and the review in the admin: entries are added and changed through the
services (so each edit is a version, and a changed question is embedded again), invalid edits are
errors on their fields that write nothing, lists filter and search, the bulk actions change
status one version each, a pending item is edited and approved (or rejected) on its page, and
the lookup counters show their hit rate."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from clustering.services.moderation import SYSTEM
from conversations.models import EmbeddingState, Tenant
from feedback import admin as feedback_admin
from feedback.knowledge import knowledge_entry_create, knowledge_entry_update, knowledge_fields_clean
from feedback.models import (
    KnowledgeEntry,
    KnowledgeEntryVersion,
    KnowledgeLookupDay,
    KnowledgeSource,
    LearningItem,
    LearningStatus,
)
from feedback.payloads import CorrectionIn
from feedback.services import correction_record, learning_item_reject
from tests.feedback.conftest import ANSWER, QUESTION, Exchange

pytestmark = pytest.mark.django_db

ENTRIES = reverse("admin:feedback_knowledgeentry_changelist")
ADD_ENTRY = reverse("admin:feedback_knowledgeentry_add")
LOOKUP_DAYS = reverse("admin:feedback_knowledgelookupday_changelist")


# --- helpers -------------------------------------------------------------------------------------


def entry_of(tenant: Tenant, question: str = "How do I reset my password?", **kwargs: Any) -> KnowledgeEntry:
    fields = knowledge_fields_clean(question=question, answer=kwargs.pop("answer", "Use the reset link."))
    return knowledge_entry_create(tenant=tenant, fields=fields, actor=SYSTEM, **kwargs)


def change_url(obj: Any) -> str:
    return reverse(f"admin:feedback_{obj._meta.model_name}_change", args=[quote(obj.pk)])


def review_url(item: LearningItem) -> str:
    return reverse("admin:feedback_learningitem_review", args=[quote(item.pk)])


def entry_form(entry: KnowledgeEntry, **changes: str) -> dict[str, str]:
    """The change form as a browser posts it when loaded with ``entry``: its values (then
    ``changes``), and the hidden copies of the values the page was loaded with."""
    values = {"question": entry.question, "answer": entry.answer, "tags": ",".join(entry.tags)}
    data = {**values, **{f"initial-{name}": value for name, value in values.items()}, "_save": "Save"}
    data["initial-active"] = str(entry.active)
    if entry.active:
        data["active"] = "on"
    return {**data, **changes}


def listed(client: Client, url: str) -> set[Any]:
    response = client.get(url)
    assert response.status_code == 200
    return {obj.pk for obj in response.context["cl"].result_list}


def shown_messages(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def correction_item(tenant: Tenant, exchange: Exchange, text: str) -> LearningItem:
    payload = CorrectionIn(
        conversation_id=exchange.conversation.pk,
        message_id=exchange.answer.pk,
        corrected_text=text,
        corrected_by="owner",
    )
    return LearningItem.objects.get(correction=correction_record(tenant=tenant, payload=payload))


def versions_of(entry: KnowledgeEntry) -> list[tuple[int, str, str]]:
    return list(entry.versions.order_by("version").values_list("version", "answer", "changed_by"))


# --- entries: add and change through the services ------------------------------------------------


def test_add_makes_version_one_pending_embedding_manual_source(admin_client: Client, tenant: Tenant) -> None:
    response = admin_client.post(
        ADD_ENTRY,
        {
            "tenant": str(tenant.pk),
            "key": "reset",
            "question": "  How do I reset my password?  ",
            "answer": "Use the reset link.",
            "tags": "Account, account,Login",
            "active": "on",
            "_save": "Save",
        },
    )

    assert response.status_code == 302
    entry = KnowledgeEntry.objects.get()
    assert (entry.tenant_id, entry.key, entry.question) == (tenant.pk, "reset", "How do I reset my password?")
    assert entry.tags == ["account", "login"]  # the service's cleaning: lower-cased, deduplicated
    assert (entry.version, entry.source, entry.active) == (1, KnowledgeSource.MANUAL, True)
    assert entry.embedding_state == EmbeddingState.PENDING
    assert entry.updated_by == "user:admin"
    version = entry.versions.get()
    assert (version.version, version.change, version.changed_by) == (1, "created", "user:admin")


def test_add_with_a_key_the_tenant_has_is_an_error_on_the_key(admin_client: Client, tenant: Tenant) -> None:
    entry_of(tenant, key="reset")
    form = {"tenant": str(tenant.pk), "key": "reset", "question": "Other?", "answer": "Other.", "_save": "Save"}

    response = admin_client.post(ADD_ENTRY, form)

    assert response.status_code == 200
    assert "key" in response.context["adminform"].form.errors
    assert KnowledgeEntry.objects.count() == 1


def test_change_makes_version_two_and_a_history_row(admin_client: Client, tenant: Tenant, other_tenant: Tenant) -> None:
    entry = entry_of(tenant, answer="Use the <b>reset</b> link.")
    KnowledgeEntry.objects.filter(pk=entry.pk).update(embedding_state=EmbeddingState.DONE)

    response = admin_client.post(
        change_url(entry),
        entry_form(entry, answer="Click the forgot password link.", tenant=str(other_tenant.pk), version="9"),
    )

    assert response.status_code == 302
    entry.refresh_from_db()
    assert (entry.version, entry.answer, entry.tenant_id) == (2, "Click the forgot password link.", tenant.pk)
    # Only the question is embedded: a new answer keeps the vector.
    assert entry.embedding_state == EmbeddingState.DONE
    assert versions_of(entry) == [
        (1, "Use the <b>reset</b> link.", "system"),
        (2, "Click the forgot password link.", "user:admin"),
    ]

    page = admin_client.get(change_url(entry)).content.decode()
    history = page[page.index('class="knowledge-history"') :]
    assert history.index("<td>2</td>") < history.index("<td>1</td>")  # newest first
    # The answer's word diff, escaped like the rest.
    assert (
        "<del>Use</del> <ins>Click</ins> the <del>&lt;b&gt;reset&lt;/b&gt;</del> <ins>forgot password</ins>" in history
    )
    assert "&lt;b&gt;reset&lt;/b&gt;" in history and "<b>reset</b>" not in page  # tenant text escaped


def test_a_changed_question_is_embedded_again(admin_client: Client, tenant: Tenant) -> None:
    entry = entry_of(tenant)
    KnowledgeEntry.objects.filter(pk=entry.pk).update(embedding_state=EmbeddingState.DONE)

    admin_client.post(change_url(entry), entry_form(entry, question="How can I change my password?"))

    entry.refresh_from_db()
    assert (entry.version, entry.embedding_state) == (2, EmbeddingState.PENDING)


def test_a_save_that_changes_nothing_writes_no_version(admin_client: Client, tenant: Tenant) -> None:
    entry = entry_of(tenant)

    assert admin_client.post(change_url(entry), entry_form(entry)).status_code == 302

    entry.refresh_from_db()
    assert entry.version == 1
    assert entry.versions.count() == 1


def test_a_change_passes_only_the_changed_fields(
    admin_client: Client, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So a tags edit made from a stale page does not write back an answer changed meanwhile."""
    entry = entry_of(tenant)
    stale = KnowledgeEntry.objects.get(pk=entry.pk)
    knowledge_entry_update(entry=entry, actor=SYSTEM, answer="A newer answer.")
    calls: list[dict[str, Any]] = []
    real = feedback_admin.knowledge_entry_update

    def spy(**kwargs: Any) -> KnowledgeEntry:
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(feedback_admin, "knowledge_entry_update", spy)
    admin_client.post(change_url(entry), entry_form(stale, tags="billing"))

    assert [(call["question"], call["answer"], call["tags"], call["active"]) for call in calls] == [
        (None, None, ("billing",), None)
    ]
    entry.refresh_from_db()
    assert (entry.answer, entry.tags, entry.version) == ("A newer answer.", ["billing"], 3)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"answer": "   "}, "answer"),
        ({"question": "x" * 11}, "question"),  # one past the limit the test sets
        ({"tags": "a,b,c"}, "tags"),  # one past KNOWLEDGE_MAX_TAGS
    ],
)
def test_an_invalid_change_is_an_error_on_its_field_and_writes_nothing(
    admin_client: Client, tenant: Tenant, settings: Any, changes: dict[str, str], field: str
) -> None:
    settings.KNOWLEDGE_MAX_QUESTION_CHARS = 10
    settings.KNOWLEDGE_MAX_TAGS = 2
    entry = entry_of(tenant, question="Reset?")

    response = admin_client.post(change_url(entry), entry_form(entry, **changes))

    assert response.status_code == 200
    assert list(response.context["adminform"].form.errors) == [field]
    entry.refresh_from_db()
    assert (entry.question, entry.answer, entry.tags, entry.version) == ("Reset?", "Use the reset link.", [], 1)
    assert entry.versions.count() == 1


def test_a_question_at_the_limit_is_accepted(admin_client: Client, tenant: Tenant, settings: Any) -> None:
    settings.KNOWLEDGE_MAX_QUESTION_CHARS = 10
    entry = entry_of(tenant, question="Reset?")

    response = admin_client.post(change_url(entry), entry_form(entry, question="x" * 10))

    assert response.status_code == 302
    entry.refresh_from_db()
    assert (entry.question, entry.version) == ("x" * 10, 2)


def test_tenant_key_and_bookkeeping_are_read_only_on_change(admin_client: Client, tenant: Tenant) -> None:
    entry = entry_of(tenant, key="reset")

    form = admin_client.get(change_url(entry)).context["adminform"].form

    assert set(form.fields) == {"question", "answer", "tags", "active"}


def test_delete_goes_through_the_service(admin_client: Client, tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    kept, gone = entry_of(tenant, "Kept?"), entry_of(tenant, "Gone?")
    deleted: list[Any] = []
    real = feedback_admin.knowledge_entry_delete

    def spy(*, entry: KnowledgeEntry) -> None:
        deleted.append(entry.pk)
        real(entry=entry)

    monkeypatch.setattr(feedback_admin, "knowledge_entry_delete", spy)

    admin_client.post(ENTRIES, {"action": "delete_selected", "_selected_action": [str(gone.pk)], "post": "yes"})

    assert deleted == [gone.pk]
    assert list(KnowledgeEntry.objects.values_list("pk", flat=True)) == [kept.pk]
    assert not KnowledgeEntryVersion.objects.filter(entry_id=gone.pk).exists()


# --- entries: the list ----------------------------------------------------------------------------


def test_filters_by_tenant_source_status_and_embedding_state(
    admin_client: Client, tenant: Tenant, other_tenant: Tenant
) -> None:
    manual = entry_of(tenant, "Manual?")
    corrected = entry_of(tenant, "Corrected?", source=KnowledgeSource.CORRECTION)
    inactive = entry_of(tenant, "Inactive?", active=False)
    theirs = entry_of(other_tenant, "Theirs?")
    KnowledgeEntry.objects.filter(pk=corrected.pk).update(embedding_state=EmbeddingState.DONE)

    assert listed(admin_client, ENTRIES) == {manual.pk, corrected.pk, inactive.pk, theirs.pk}
    assert listed(admin_client, f"{ENTRIES}?tenant__id__exact={other_tenant.pk}") == {theirs.pk}
    assert listed(admin_client, f"{ENTRIES}?source__exact=correction") == {corrected.pk}
    assert listed(admin_client, f"{ENTRIES}?active__exact=0") == {inactive.pk}
    assert listed(admin_client, f"{ENTRIES}?active__exact=1&tenant__id__exact={tenant.pk}") == {
        manual.pk,
        corrected.pk,
    }
    assert listed(admin_client, f"{ENTRIES}?embedding_state__exact=done") == {corrected.pk}


def test_search_over_question_answer_key_and_exact_id(admin_client: Client, tenant: Tenant) -> None:
    by_question = entry_of(tenant, "Where is my refund?", answer="It takes five days.")
    by_answer = entry_of(tenant, "Money back?", answer="Refunds take five days.")
    by_key = entry_of(tenant, "Opening hours?", answer="Nine to five.", key="hours-2024")
    unrelated = entry_of(tenant, "Shipping?", answer="Two days.")

    assert listed(admin_client, f"{ENTRIES}?q=refund") == {by_question.pk, by_answer.pk}
    assert listed(admin_client, f"{ENTRIES}?q=hours-2024") == {by_key.pk}
    assert listed(admin_client, f"{ENTRIES}?q={unrelated.pk}") == {unrelated.pk}
    assert listed(admin_client, f"{ENTRIES}?q=five") == {by_question.pk, by_answer.pk, by_key.pk}


def test_deactivate_and_activate_make_one_version_per_changed_entry(admin_client: Client, tenant: Tenant) -> None:
    active, inactive = entry_of(tenant, "Active?"), entry_of(tenant, "Inactive?", active=False)
    selected = [str(active.pk), str(inactive.pk)]

    response = admin_client.post(ENTRIES, {"action": "deactivate_selected", "_selected_action": selected}, follow=True)

    active.refresh_from_db()
    inactive.refresh_from_db()
    assert (active.active, active.version, inactive.version) == (False, 2, 1)  # the inactive one is left alone
    assert active.versions.get(version=2).change == "deactivated"
    assert "Deactivated 1 entry(ies)." in shown_messages(response)

    admin_client.post(ENTRIES, {"action": "activate_selected", "_selected_action": selected})

    assert list(KnowledgeEntry.objects.order_by("question").values_list("active", "version")) == [
        (True, 3),
        (True, 2),
    ]


# --- learning items: edit and approve, or reject, on the item's page ----------------------------------


def test_the_pending_item_page_offers_the_review_form_with_the_diff(
    admin_client: Client, tenant: Tenant, mine: Exchange
) -> None:
    item = correction_item(tenant, mine, "We open at noon on Sundays.")

    page = admin_client.get(change_url(item)).content.decode()

    assert 'id="learning-review-form"' in page
    assert f'action="{review_url(item)}"' in page
    assert 'class="diff"' in page and "We open at noon on Sundays." in page


def test_edit_and_approve_creates_an_entry_with_the_edited_answer(
    admin_client: Client, tenant: Tenant, mine: Exchange
) -> None:
    item = correction_item(tenant, mine, "We open at noon.")

    response = admin_client.post(
        review_url(item),
        {"question": "Are you open on Sundays?", "answer": "  We open at noon on Sundays.  ", "note": "tidied"},
        follow=True,
    )

    item.refresh_from_db()
    entry = KnowledgeEntry.objects.get()
    assert item.status == LearningStatus.APPLIED
    assert (item.entry_id, item.approved_answer, item.review_note) == (
        entry.pk,
        "We open at noon on Sundays.",
        "tidied",
    )
    assert (entry.tenant_id, entry.question) == (tenant.pk, "Are you open on Sundays?")
    assert entry.answer == "We open at noon on Sundays."  # the edit, trimmed, not the proposed answer
    assert (entry.source, entry.embedding_state) == (KnowledgeSource.CORRECTION, EmbeddingState.PENDING)
    assert entry.versions.get().learning_item_id == item.pk
    assert response.redirect_chain[-1][0] == change_url(item)
    assert any(change_url(entry) in message for message in shown_messages(response))
    page = response.content.decode()
    assert 'id="learning-review-form"' not in page  # reviewed: nothing left to review
    assert change_url(entry) in page  # the item links its entry
    assert "approved answer" in page  # the diff now compares the original with what was approved


def test_approve_keeps_the_question_when_it_is_not_edited(admin_client: Client, tenant: Tenant, mine: Exchange) -> None:
    item = correction_item(tenant, mine, "We open at noon.")

    admin_client.post(review_url(item), {"question": QUESTION, "answer": "We open at noon.", "_approve": "1"})

    assert KnowledgeEntry.objects.get().question == QUESTION


def test_a_refused_approval_shows_the_error_on_the_field_and_keeps_the_edit(
    admin_client: Client, tenant: Tenant, mine: Exchange
) -> None:
    item = correction_item(tenant, mine, "We open at noon.")

    response = admin_client.post(review_url(item), {"question": QUESTION, "answer": "   ", "note": "", "_approve": "1"})

    assert response.status_code == 200
    assert list(response.context["review_form"].errors) == ["answer"]
    item.refresh_from_db()
    assert item.status == LearningStatus.PENDING
    assert not KnowledgeEntry.objects.exists()


def test_the_review_page_diff_compares_the_original_with_the_edited_answer(
    admin_client: Client, tenant: Tenant, mine: Exchange, settings: Any
) -> None:
    settings.FEEDBACK_MAX_REASON_CHARS = 3
    item = correction_item(tenant, mine, "We open at noon.")

    response = admin_client.post(
        review_url(item), {"answer": "An <i>edited</i> answer.", "note": "too long", "_approve": "1"}
    )

    assert list(response.context["review_form"].errors) == ["note"]
    page = response.content.decode()
    assert '"diff_header">edited answer<' in page and ANSWER.replace(" ", "&nbsp;") in page
    assert "&lt;i&gt;edited&lt;/i&gt;" in page and "<i>edited</i>" not in page


def test_reject_with_a_note(admin_client: Client, tenant: Tenant, mine: Exchange) -> None:
    item = correction_item(tenant, mine, "Wrong.")

    response = admin_client.post(review_url(item), {"answer": "ignored", "note": "not our policy", "_reject": "1"})

    assert response.status_code == 302
    item.refresh_from_db()
    assert (item.status, item.review_note, item.reviewed_by) == (
        LearningStatus.REJECTED,
        "not our policy",
        "user:admin",
    )
    assert not KnowledgeEntry.objects.exists()


def test_approving_an_already_reviewed_item_is_refused_with_a_message(
    admin_client: Client, tenant: Tenant, mine: Exchange
) -> None:
    item = correction_item(tenant, mine, "We open at noon.")
    learning_item_reject(item=item, actor=SYSTEM, note="no")

    response = admin_client.post(review_url(item), {"answer": "We open at noon.", "_approve": "1"}, follow=True)

    assert response.redirect_chain[-1][0] == change_url(item)
    assert any("already rejected" in message for message in shown_messages(response))
    item.refresh_from_db()
    assert (item.status, item.review_note) == (LearningStatus.REJECTED, "no")
    assert not KnowledgeEntry.objects.exists()
    # Opening the review page of a reviewed item leads back to the item.
    assert admin_client.get(review_url(item)).status_code == 302


def test_reviewing_needs_the_change_permission(tenant: Tenant, mine: Exchange) -> None:
    viewer = get_user_model().objects.create_user("viewer", "v@example.com", "pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_learningitem"))
    client = Client()
    client.force_login(viewer)
    item = correction_item(tenant, mine, "We open at noon.")

    assert 'id="learning-review-form"' not in client.get(change_url(item)).content.decode()
    assert client.post(review_url(item), {"answer": "x", "_approve": "1"}).status_code == 403
    item.refresh_from_db()
    assert item.status == LearningStatus.PENDING


# --- the lookup counters ----------------------------------------------------------------------------


def test_lookup_days_are_listed_with_their_hit_rate(admin_client: Client, tenant: Tenant, other_tenant: Tenant) -> None:
    today = timezone.now().date()
    mine = KnowledgeLookupDay.objects.create(tenant=tenant, day=today, answered=3, suggested=1, unmatched=0)
    theirs = KnowledgeLookupDay.objects.create(tenant=other_tenant, day=today, answered=1, suggested=0, unmatched=4)

    response = admin_client.get(LOOKUP_DAYS)

    assert {row.pk for row in response.context["cl"].result_list} == {mine.pk, theirs.pk}
    page = response.content.decode()
    assert "75.0%" in page and "20.0%" in page
    assert response.context["lookup_totals"] == {
        "answered": 4,
        "suggested": 1,
        "unmatched": 4,
        "lookups": 9,
        "hit_rate": "44.4%",
    }
    filtered = admin_client.get(f"{LOOKUP_DAYS}?tenant__id__exact={tenant.pk}")
    assert [row.pk for row in filtered.context["cl"].result_list] == [mine.pk]
    assert filtered.context["lookup_totals"]["hit_rate"] == "75.0%"
    assert admin_client.get(reverse("admin:feedback_knowledgelookupday_add")).status_code == 403


def test_a_day_without_lookups_has_no_hit_rate(admin_client: Client, tenant: Tenant) -> None:
    KnowledgeLookupDay.objects.create(tenant=tenant, day=timezone.now().date())

    response = admin_client.get(LOOKUP_DAYS)

    assert response.context["lookup_totals"]["hit_rate"] == "—"
    assert '<td class="field-hit_rate">—</td>' in response.content.decode()
