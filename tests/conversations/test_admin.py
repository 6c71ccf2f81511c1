"""The staff admin: soft-deleted rows hidden by default, writes only through services, nothing
editable that the API owns, bounded pages (inline limit, no whole-table counts), keys shown once."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.admin.utils import quote
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from conversations import admin as convo_admin
from conversations.models import Conversation, ConversationStatus, EmbeddingState, Message, Tenant, TenantAPIKey
from conversations.selectors import tenant_for_api_key
from conversations.services.tenants import tenant_api_key_create
from tests.factories import ConversationFactory, MessageFactory, TenantFactory

pytestmark = pytest.mark.django_db

CONVERSATIONS = reverse("admin:conversations_conversation_changelist")
MESSAGES = reverse("admin:conversations_message_changelist")
KEYS = reverse("admin:conversations_tenantapikey_changelist")


def _change_url(obj: Any) -> str:
    return reverse(f"admin:conversations_{obj._meta.model_name}_change", args=[quote(obj.pk)])


def _listed(client: Client, url: str) -> set[Any]:
    response = client.get(url)
    assert response.status_code == 200
    return {obj.pk for obj in response.context["cl"].result_list}


def _spy(monkeypatch: pytest.MonkeyPatch, name: str) -> list[dict[str, Any]]:
    """Record the keyword arguments of each call to the service ``name`` the admin imported,
    and still call it."""
    calls: list[dict[str, Any]] = []
    real = getattr(convo_admin, name)

    def spy(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(convo_admin, name, spy)
    return calls


def _conversation_form(**fields: str) -> dict[str, str]:
    """A change-form POST as a browser sends it (the messages inline's management form included)."""
    return {"messages-TOTAL_FORMS": "0", "messages-INITIAL_FORMS": "0", "_save": "Save", **fields}


def test_site_is_convo_admin_without_the_library_key_model(admin_client: Client) -> None:
    assert "convo admin" in admin_client.get(reverse("admin:index")).content.decode()
    # The library's own APIKey authenticates nothing here; its page must not be offered.
    assert admin_client.get("/admin/rest_framework_api_key/apikey/").status_code == 404


# --- lists and filters ---------------------------------------------------------------------------


def test_conversation_list_hides_soft_deleted_by_default(admin_client: Client) -> None:
    live = ConversationFactory()
    gone = ConversationFactory(deleted_at=timezone.now())

    assert _listed(admin_client, CONVERSATIONS) == {live.pk}
    assert _listed(admin_client, CONVERSATIONS + "?deleted=deleted") == {gone.pk}
    assert _listed(admin_client, CONVERSATIONS + "?deleted=all") == {live.pk, gone.pk}


def test_conversation_list_filters_by_tenant_and_embedding_state(admin_client: Client) -> None:
    done = ConversationFactory(embedding_state=EmbeddingState.DONE)
    ConversationFactory(tenant=done.tenant)
    ConversationFactory(embedding_state=EmbeddingState.DONE)

    url = f"{CONVERSATIONS}?tenant__id__exact={done.tenant_id}&embedding_state=done"
    assert _listed(admin_client, url) == {done.pk}


def test_message_list_hides_messages_of_soft_deleted_conversations(admin_client: Client) -> None:
    live = MessageFactory()
    gone = MessageFactory(conversation=ConversationFactory(deleted_at=timezone.now()))

    assert _listed(admin_client, MESSAGES) == {live.pk}
    assert _listed(admin_client, MESSAGES + "?deleted=deleted") == {gone.pk}
    # The conversation form's "all messages" link: one conversation's messages, deleted or not.
    one_conversation = f"{MESSAGES}?conversation__id__exact={gone.conversation_id}&deleted=all"
    assert _listed(admin_client, one_conversation) == {gone.pk}


def test_conversation_search_is_exact_on_identifiers_and_finds_ids(admin_client: Client) -> None:
    target = ConversationFactory(external_user_id="tg:12345")
    longer = ConversationFactory(external_user_id="tg:123456")

    assert _listed(admin_client, CONVERSATIONS + "?q=tg:12345") == {target.pk}
    assert _listed(admin_client, f"{CONVERSATIONS}?q={longer.pk}") == {longer.pk}
    assert _listed(admin_client, f"{CONVERSATIONS}?q={target.session_id}") == {target.pk}


def test_message_search_by_conversation_id_and_sender_prefix(admin_client: Client) -> None:
    first = MessageFactory(sender_name="Alice Smith")
    second = MessageFactory(conversation=first.conversation, sender_name="Bob")
    MessageFactory(sender_name="Carol")

    assert _listed(admin_client, f"{MESSAGES}?q={first.conversation_id}") == {first.pk, second.pk}
    assert _listed(admin_client, MESSAGES + "?q=alice") == {first.pk}
    # Text is not searched (that would scan the biggest table with LIKE).
    assert _listed(admin_client, MESSAGES + "?q=" + first.text.split()[0]) == set()


@pytest.mark.parametrize("url", [CONVERSATIONS + "?deleted=all", MESSAGES + "?deleted=all", MESSAGES])
def test_lists_count_at_most_a_bounded_number_of_rows(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setattr(convo_admin.EstimatedCountPaginator, "exact_up_to", 3)
    MessageFactory.create_batch(5)

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(url)

    assert response.status_code == 200
    counts = [query["sql"] for query in queries.captured_queries if "COUNT(" in query["sql"].upper()]
    assert counts, "the list counted nothing at all"
    assert all("LIMIT 4" in sql for sql in counts), counts
    changelist = response.context["cl"]
    assert changelist.paginator.count_is_estimate
    assert changelist.result_count >= 4
    assert f"about {changelist.result_count}" in response.content.decode()


def test_lists_count_exactly_below_the_bound(admin_client: Client) -> None:
    ConversationFactory.create_batch(3)
    response = admin_client.get(CONVERSATIONS)
    assert response.context["cl"].result_count == 3
    assert not response.context["cl"].paginator.count_is_estimate
    assert "about" not in response.content.decode()


# --- conversation writes -----------------------------------------------------------------------------


def test_soft_delete_action_goes_through_the_service(admin_client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy(monkeypatch, "conversation_soft_delete")
    chosen = ConversationFactory.create_batch(2)
    kept = ConversationFactory()
    message = MessageFactory(conversation=chosen[0])

    response = admin_client.post(
        CONVERSATIONS,
        {"action": "soft_delete_selected", "index": "0", "_selected_action": [str(c.pk) for c in chosen]},
    )

    assert response.status_code == 302
    assert sorted(call["conversation"].pk for call in calls) == sorted(c.pk for c in chosen)
    for conversation in chosen:
        conversation.refresh_from_db()
        assert conversation.deleted_at is not None
    kept.refresh_from_db()
    assert kept.deleted_at is None
    assert Conversation.objects.count() == 3 and Message.objects.filter(pk=message.pk).exists()  # rows stay


def test_hard_delete_is_not_offered(admin_client: Client) -> None:
    conversation = ConversationFactory()
    page = admin_client.get(CONVERSATIONS).content.decode()
    assert 'value="soft_delete_selected"' in page
    assert 'value="delete_selected"' not in page

    admin_client.post(CONVERSATIONS, {"action": "delete_selected", "index": "0", "_selected_action": [conversation.pk]})
    delete_url = reverse("admin:conversations_conversation_delete", args=[conversation.pk])
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403
    assert Conversation.objects.filter(pk=conversation.pk).exists()


def test_conversation_add_is_forbidden(admin_client: Client) -> None:
    assert admin_client.get(reverse("admin:conversations_conversation_add")).status_code == 403
    assert admin_client.post(reverse("admin:conversations_conversation_add"), {"status": "active"}).status_code == 403
    assert not Conversation.objects.exists()


def test_status_change_goes_through_the_service_and_read_only_fields_stay(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy(monkeypatch, "conversation_update")
    conversation = ConversationFactory(embedding_state=EmbeddingState.DONE, summary="as it was")
    other_tenant = TenantFactory()

    response = admin_client.post(
        _change_url(conversation),
        _conversation_form(
            status="closed",
            summary="as it was",
            tenant=str(other_tenant.pk),
            embedding_state="failed",
            external_user_id="someone-else",
            deleted_at="2020-01-01 00:00:00",
            transcript="rewritten",
        ),
    )

    assert response.status_code == 302
    conversation.refresh_from_db()
    assert conversation.status == ConversationStatus.CLOSED
    assert conversation.tenant_id != other_tenant.pk
    assert conversation.embedding_state == EmbeddingState.DONE
    assert conversation.external_user_id != "someone-else"
    assert conversation.deleted_at is None and conversation.transcript == ""
    assert [call["changes"].model_dump(exclude_unset=True) for call in calls] == [{"status": "closed"}]


def test_summary_change_requeues_embedding(admin_client: Client) -> None:
    """What ``conversation_update`` does and a plain save would not."""
    conversation = ConversationFactory(embedding_state=EmbeddingState.DONE, summary="old")

    admin_client.post(_change_url(conversation), _conversation_form(status="active", summary="new"))

    conversation.refresh_from_db()
    assert conversation.summary == "new"
    assert conversation.embedding_state == EmbeddingState.PENDING


def test_summary_over_the_api_limit_is_a_form_error(admin_client: Client, settings: Any) -> None:
    settings.CONVO_MAX_TEXT_CHARS = 10
    conversation = ConversationFactory(summary="short")

    response = admin_client.post(_change_url(conversation), _conversation_form(status="active", summary="x" * 11))

    assert response.status_code == 200
    assert "summary" in response.context["adminform"].form.errors
    conversation.refresh_from_db()
    assert conversation.summary == "short"


def test_reopening_into_a_taken_session_is_a_form_error(admin_client: Client) -> None:
    active = ConversationFactory(session_id="s-1")
    closed = ConversationFactory(
        tenant=active.tenant, external_user_id=active.external_user_id, session_id="s-1", status="closed"
    )

    response = admin_client.post(_change_url(closed), _conversation_form(status="active", summary=""))

    assert response.status_code == 200
    assert response.context["adminform"].form.non_field_errors()
    closed.refresh_from_db()
    assert closed.status == ConversationStatus.CLOSED


def test_soft_deleted_conversation_is_read_only(admin_client: Client) -> None:
    conversation = ConversationFactory(deleted_at=timezone.now())

    assert admin_client.get(_change_url(conversation)).status_code == 200
    response = admin_client.post(_change_url(conversation), _conversation_form(status="closed", summary=""))

    assert response.status_code == 403
    conversation.refresh_from_db()
    assert conversation.status == ConversationStatus.ACTIVE


# --- the messages inline and the message admin --------------------------------------------------------


def test_messages_inline_shows_only_the_first_messages(admin_client: Client) -> None:
    limit = convo_admin.MESSAGES_INLINE_LIMIT
    conversation = ConversationFactory()
    for number in range(limit + 5):
        MessageFactory(conversation=conversation, text=f"msg-{number:04d}")

    response = admin_client.get(_change_url(conversation))

    assert response.status_code == 200
    page = response.content.decode()
    assert len(re.findall(r'<tr class="form-row[^"]*"\s+id="messages-\d+"', page)) == limit
    assert f'name="messages-TOTAL_FORMS" value="{limit}"' in page
    assert "msg-0000" in page and f"msg-{limit - 1:04d}" in page  # the oldest, in order
    assert f"msg-{limit:04d}" not in page


def test_messages_inline_renders_avatars_for_http_urls_only(admin_client: Client) -> None:
    conversation = ConversationFactory()
    MessageFactory(conversation=conversation, sender_avatar_url="https://cdn.example.com/a.png?s=1&t=2")
    MessageFactory(conversation=conversation, sender_avatar_url="javascript:alert(1)")

    page = admin_client.get(_change_url(conversation)).content.decode()

    assert '<img src="https://cdn.example.com/a.png?s=1&amp;t=2" alt="" width="24" height="24"' in page
    assert "javascript:alert" not in page
    assert page.count("<img src=") == 1


def test_messages_inline_is_read_only(admin_client: Client) -> None:
    message = MessageFactory(text="original")
    page = admin_client.get(_change_url(message.conversation)).content.decode()
    assert 'name="messages-0-text"' not in page and 'name="messages-0-role"' not in page
    assert 'name="messages-0-DELETE"' not in page


def test_message_admin_is_read_only(admin_client: Client) -> None:
    message = MessageFactory(text="original", sender_avatar_url="https://cdn.example.com/b.png")

    response = admin_client.get(_change_url(message))
    assert response.status_code == 200
    assert '<img src="https://cdn.example.com/b.png"' in response.content.decode()
    assert admin_client.post(_change_url(message), {"text": "edited", "role": "user"}).status_code == 403
    assert admin_client.get(reverse("admin:conversations_message_add")).status_code == 403
    delete_url = reverse("admin:conversations_message_delete", args=[message.pk])
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403
    message.refresh_from_db()
    assert message.text == "original"


# --- tenants and keys -----------------------------------------------------------------------------------


def test_tenant_add_goes_through_the_service_and_delete_is_forbidden(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy(monkeypatch, "tenant_create")

    response = admin_client.post(reverse("admin:conversations_tenant_add"), {"name": "Acme", "slug": "acme"})

    assert response.status_code == 302
    tenant = Tenant.objects.get(slug="acme")
    assert calls == [{"name": "Acme", "slug": "acme"}] and tenant.is_active
    assert _listed(admin_client, reverse("admin:conversations_tenant_changelist") + "?q=acm") == {tenant.pk}
    delete_url = reverse("admin:conversations_tenant_delete", args=[tenant.pk])
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403


def test_tenant_change_keeps_the_slug_and_links_its_keys(admin_client: Client, tenant: Tenant) -> None:
    slug = tenant.slug
    page = admin_client.get(_change_url(tenant)).content.decode()
    assert f"?tenant__id__exact={tenant.pk}" in page  # the tenant's keys

    response = admin_client.post(_change_url(tenant), {"name": "Renamed", "slug": "hijacked"})  # is_active unticked

    assert response.status_code == 302
    tenant.refresh_from_db()
    assert (tenant.name, tenant.slug, tenant.is_active) == ("Renamed", slug, False)


def test_api_key_is_made_by_the_service_shown_once_and_stored_hashed(
    admin_client: Client, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy(monkeypatch, "tenant_api_key_create")

    response = admin_client.post(
        reverse("admin:conversations_tenantapikey_add"), {"tenant": tenant.pk, "name": "bot"}, follow=True
    )

    assert response.status_code == 200
    assert calls == [{"tenant": tenant, "name": "bot"}]
    shown = re.findall(r"The API key for bot is (\S+) —", response.content.decode())
    assert len(shown) == 1
    key = shown[0]
    stored = TenantAPIKey.objects.get()
    secret = key.partition(".")[2]
    assert secret and all(secret not in str(getattr(stored, f.attname)) for f in TenantAPIKey._meta.concrete_fields)
    assert stored.hashed_key.startswith("sha512$$") and stored.is_valid(key)
    assert tenant_for_api_key(key=key) == (tenant, stored.pk)
    # Once: not on the next page, nor on the key's own page, which shows no hash either.
    assert key not in admin_client.get(KEYS).content.decode()
    change_page = admin_client.get(_change_url(stored)).content.decode()
    assert key not in change_page and "Hashed key" not in change_page


def test_revoking_a_key_goes_through_the_service(
    admin_client: Client, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy(monkeypatch, "tenant_api_key_revoke")
    api_key, key = tenant_api_key_create(tenant=tenant, name="old")

    response = admin_client.post(
        _change_url(api_key), {"name": "old", "expiry_date_0": "", "expiry_date_1": "", "revoked": "on"}
    )

    assert response.status_code == 302
    assert [call["api_key"].pk for call in calls] == [api_key.pk]
    assert tenant_for_api_key(key=key) is None
    delete_url = reverse("admin:conversations_tenantapikey_delete", args=[quote(api_key.pk)])
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403


def test_embedding_cache_hits_and_misses_are_visible(admin_client: Client) -> None:
    from conversations.services.embedding import embedding_drain

    conversation = ConversationFactory()
    for text in ["where is my card", "where is my card", "where is my card", "how do I top up"]:
        MessageFactory(conversation=conversation, text=text)
    embedding_drain(seconds=30)
    MessageFactory(conversation=conversation, text="where is my card")  # a later batch: a cache hit
    embedding_drain(seconds=30)
    page = admin_client.get("/admin/conversations/embeddingcachestats/").content.decode()
    # Two distinct texts missed once each (repeats within a batch never reach the cache twice);
    # the later copy was a hit: 1 of 3 lookups.
    assert "hashing:v1@384" in page and '<td class="field-misses">2</td>' in page
    assert '<td class="field-hit_rate">33.3%</td>' in page
    response = admin_client.post("/admin/conversations/embeddingcachestats/add/", {})
    assert response.status_code == 403
