"""The delivery API: per-message status, pull mode (list + ack), retry, the webhook endpoint, its
limits, and tenant isolation, against the real database."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from clustering.models import AnswerDelivery, DeliveryEndpoint, DeliveryStatus
from clustering.services.webhooks import deliveries_send_due, webhook_signature_verify
from conversations.models import Tenant
from tests.clustering.test_deliveries import Receiver, Reply, answered_cluster, running_receiver

pytestmark = pytest.mark.django_db


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as server:
        yield server


def field_errors(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 400, response.content
    return response.json()["error"]["fields"]


def ids(response: Any) -> list[str]:
    return [item["id"] for item in response.json()["results"]]


# --- list and detail ---------------------------------------------------------------------------------


def test_list_shows_each_messages_delivery_oldest_first(api: APIClient, tenant: Tenant) -> None:
    cluster, messages = answered_cluster(tenant, members=3, answer="Yes.")
    response = api.get("/api/v1/deliveries")
    assert response.status_code == 200
    results = response.json()["results"]
    expected = AnswerDelivery.objects.order_by("created_at", "id")
    assert [r["id"] for r in results] == [str(d.pk) for d in expected]
    by_message = {r["message_id"]: r for r in results}
    assert set(by_message) == {str(m.pk) for m in messages}
    item = by_message[str(messages[0].pk)]
    assert item["kind"] == "answer" and item["status"] == "pending" and item["answer"] == "Yes."
    assert item["cluster_id"] == str(cluster.pk) and item["answer_version"] == 1
    assert item["conversation_id"] == str(messages[0].conversation_id)
    assert item["user_id"] == messages[0].conversation.external_user_id and item["channel"] == "web"
    assert item["attempts"] == 0 and item["delivered_at"] is None and item["last_error"] == ""


def test_list_filters_and_pages(api: APIClient, tenant: Tenant) -> None:
    first, first_messages = answered_cluster(tenant, members=3)
    second, _ = answered_cluster(tenant, members=2)
    AnswerDelivery.objects.filter(message=first_messages[0]).update(status=DeliveryStatus.DELIVERED)

    assert len(ids(api.get(f"/api/v1/deliveries?cluster_id={second.pk}"))) == 2
    assert len(ids(api.get("/api/v1/deliveries?status=pending"))) == 4
    assert len(ids(api.get(f"/api/v1/deliveries?status=pending&cluster_id={first.pk}"))) == 2
    assert len(ids(api.get("/api/v1/deliveries?status=delivered&kind=answer"))) == 1
    assert ids(api.get("/api/v1/deliveries?kind=suggestion")) == []
    only = api.get(f"/api/v1/deliveries?message_id={first_messages[1].pk}").json()["results"]
    assert [r["message_id"] for r in only] == [str(first_messages[1].pk)]

    seen: list[str] = []
    url: str | None = "/api/v1/deliveries?page_size=2"
    while url:
        page = api.get(url).json()
        assert len(page["results"]) <= 2
        seen += [r["id"] for r in page["results"]]
        url = page["next"]
    assert seen == [str(pk) for pk in AnswerDelivery.objects.order_by("created_at", "id").values_list("pk", flat=True)]


@pytest.mark.parametrize(
    ("query", "field"),
    [("status=sent", "status"), ("kind=reply", "kind"), ("cluster_id=nope", "cluster_id"),
     ("message_id=1", "message_id"), ("page_size=0", "page_size"), ("page_size=201", "page_size")],
)  # fmt: skip
def test_bad_list_filters_name_the_field(api: APIClient, tenant: Tenant, query: str, field: str) -> None:
    answered_cluster(tenant, members=1)
    assert field in field_errors(api.get(f"/api/v1/deliveries?{query}"))


def test_list_queries_do_not_grow_with_the_page(api: APIClient, tenant: Tenant) -> None:
    answered_cluster(tenant, members=1)
    api.get("/api/v1/deliveries")  # warm the API key cache
    with CaptureQueriesContext(connection) as one:
        api.get("/api/v1/deliveries")
    answered_cluster(tenant, members=20)
    with CaptureQueriesContext(connection) as many:
        assert len(ids(api.get("/api/v1/deliveries"))) == 21
    assert len(many) == len(one)


def test_detail_shows_status_and_last_error(api: APIClient, tenant: Tenant) -> None:
    answered_cluster(tenant, members=1)
    delivery = AnswerDelivery.objects.get()
    AnswerDelivery.objects.filter(pk=delivery.pk).update(
        status="failed", attempts=8, last_error="attempt 8: the endpoint answered 500 (gave up after 8 attempts)"
    )
    body = api.get(f"/api/v1/deliveries/{delivery.pk}").json()
    assert (body["id"], body["status"], body["attempts"]) == (str(delivery.pk), "failed", 8)
    assert body["last_error"].endswith("(gave up after 8 attempts)")
    assert api.get("/api/v1/deliveries/00000000-0000-0000-0000-000000000000").status_code == 404
    assert api.get("/api/v1/deliveries/not-a-uuid").status_code == 404


def test_another_tenant_sees_none_of_it(api: APIClient, other_api: APIClient, tenant: Tenant) -> None:
    answered_cluster(tenant, members=2)
    delivery = AnswerDelivery.objects.first()
    AnswerDelivery.objects.filter(pk=delivery.pk).update(status="failed")

    assert ids(other_api.get("/api/v1/deliveries")) == []
    assert other_api.get(f"/api/v1/deliveries/{delivery.pk}").status_code == 404
    retry = other_api.post(f"/api/v1/deliveries/{delivery.pk}/retry")
    assert retry.status_code == 404 and retry.json()["error"]["code"] == "not_found"
    assert other_api.post("/api/v1/deliveries/ack", {"ids": [str(delivery.pk)]}, format="json").json() == {
        "acknowledged": 0
    }  # another tenant's ids are ignored, like unknown ones
    delivery.refresh_from_db()
    assert delivery.status == "failed"
    assert other_api.get("/api/v1/delivery-endpoint").status_code == 404
    assert api.get("/api/v1/deliveries").status_code == 200


def test_the_api_needs_a_key(client: Any) -> None:
    assert client.get("/api/v1/deliveries").status_code == 401
    assert client.get("/api/v1/delivery-endpoint").status_code == 401


# --- pull mode ---------------------------------------------------------------------------------------


def test_pull_mode_list_pending_then_acknowledge(api: APIClient, tenant: Tenant) -> None:
    answered_cluster(tenant, members=3)
    pending = ids(api.get("/api/v1/deliveries?status=pending"))
    assert len(pending) == 3

    response = api.post("/api/v1/deliveries/ack", {"ids": pending[:2]}, format="json")
    assert response.status_code == 200 and response.json() == {"acknowledged": 2}
    assert ids(api.get("/api/v1/deliveries?status=pending")) == pending[2:]
    delivered = AnswerDelivery.objects.filter(status="delivered")
    assert {str(d.pk) for d in delivered} == set(pending[:2])
    assert all(d.delivered_at is not None for d in delivered)

    again = api.post("/api/v1/deliveries/ack", {"ids": pending}, format="json")  # a repeat is harmless
    assert again.json() == {"acknowledged": 1}
    assert api.post("/api/v1/deliveries/ack", {"ids": pending}, format="json").json() == {"acknowledged": 0}
    assert set(AnswerDelivery.objects.values_list("status", flat=True)) == {"delivered"}


def test_acknowledged_deliveries_are_never_pushed(api: APIClient, tenant: Tenant, receiver: Receiver) -> None:
    answered_cluster(tenant, members=2)
    acked = ids(api.get("/api/v1/deliveries"))[0]
    api.post("/api/v1/deliveries/ack", {"ids": [acked]}, format="json")
    DeliveryEndpoint.objects.create(tenant=tenant, url=receiver.url, secret="s")

    assert deliveries_send_due() == 1
    assert acked not in receiver.delivery_ids()


def test_ack_limit_is_enforced_at_the_limit_and_one_past(api: APIClient, tenant: Tenant, settings: Any) -> None:
    settings.DELIVERY_MAX_ACK_IDS = 3
    answered_cluster(tenant, members=4)
    all_ids = ids(api.get("/api/v1/deliveries"))

    at_limit = api.post("/api/v1/deliveries/ack", {"ids": all_ids[:3]}, format="json")
    assert at_limit.status_code == 200 and at_limit.json() == {"acknowledged": 3}

    past = api.post("/api/v1/deliveries/ack", {"ids": all_ids}, format="json")
    assert past.status_code == 400
    assert past.json()["error"]["code"] == "batch_too_large"
    assert "at most 3" in past.json()["error"]["fields"]["ids"][0]
    assert AnswerDelivery.objects.filter(status="pending").count() == 1  # nothing of the refused request


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "ids"), ({"ids": "x"}, "ids"), ({"ids": []}, "ids"),
     ({"ids": ["00000000-0000-0000-0000-000000000000", "nope"]}, "ids.1"), ({"ids": [7]}, "ids.0"),
     ({"ids": ["00000000-0000-0000-0000-000000000000"], "extra": 1}, "extra")],
)  # fmt: skip
def test_bad_acks_name_the_field(api: APIClient, body: dict[str, Any], field: str) -> None:
    assert field in field_errors(api.post("/api/v1/deliveries/ack", body, format="json"))


def test_ack_with_a_trailing_slash(api: APIClient, tenant: Tenant) -> None:
    answered_cluster(tenant, members=1)
    pending = ids(api.get("/api/v1/deliveries/"))
    assert api.post("/api/v1/deliveries/ack/", {"ids": pending}, format="json").json() == {"acknowledged": 1}


# --- retry -------------------------------------------------------------------------------------------


def test_retry_endpoint(api: APIClient, tenant: Tenant) -> None:
    answered_cluster(tenant, members=1)
    delivery = AnswerDelivery.objects.get()

    pending = api.post(f"/api/v1/deliveries/{delivery.pk}/retry")
    assert pending.status_code == 409 and pending.json()["error"]["code"] == "conflict"

    AnswerDelivery.objects.filter(pk=delivery.pk).update(status="failed", attempts=8, last_error="gave up")
    response = api.post(f"/api/v1/deliveries/{delivery.pk}/retry")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["attempts"], body["last_error"]) == ("pending", 0, "")

    AnswerDelivery.objects.filter(pk=delivery.pk).update(status="delivered")
    assert api.post(f"/api/v1/deliveries/{delivery.pk}/retry").status_code == 409
    assert api.post("/api/v1/deliveries/00000000-0000-0000-0000-000000000000/retry").status_code == 404


# --- the webhook endpoint ----------------------------------------------------------------------------


def test_endpoint_lifecycle_shows_the_secret_only_when_made(api: APIClient, tenant: Tenant) -> None:
    assert api.get("/api/v1/delivery-endpoint").status_code == 404

    created = api.put("/api/v1/delivery-endpoint", {"url": "https://chat.example.com/hooks/convo"}, format="json")
    assert created.status_code == 201
    secret = created.json()["secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    assert created.json()["url"] == "https://chat.example.com/hooks/convo" and created.json()["is_active"] is True

    shown = api.get("/api/v1/delivery-endpoint").json()
    assert "secret" not in shown and shown["url"] == "https://chat.example.com/hooks/convo"

    moved = api.put("/api/v1/delivery-endpoint", {"url": "http://chat:8080/hook", "is_active": False}, format="json")
    assert moved.status_code == 200 and "secret" not in moved.json() and moved.json()["is_active"] is False
    assert DeliveryEndpoint.objects.get(tenant=tenant).secret == secret

    rotated = api.put(
        "/api/v1/delivery-endpoint", {"url": "http://chat:8080/hook", "rotate_secret": True}, format="json"
    )
    assert rotated.status_code == 200
    assert rotated.json()["secret"] != secret
    assert DeliveryEndpoint.objects.get(tenant=tenant).secret == rotated.json()["secret"]

    assert api.delete("/api/v1/delivery-endpoint").status_code == 204
    assert api.get("/api/v1/delivery-endpoint").status_code == 404
    assert api.delete("/api/v1/delivery-endpoint").status_code == 204  # idempotent


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "url"), ({"url": "ftp://example.com/x"}, "url"), ({"url": "example.com/hook"}, "url"),
     ({"url": "http://"}, "url"), ({"url": "http://host:99999/"}, "url"), ({"url": "http://a b/"}, "url"),
     ({"url": "https://x.example/" + "a" * 2048}, "url"), ({"url": 7}, "url"),
     ({"url": "https://x.example/", "is_active": "yes"}, "is_active"),
     ({"url": "https://x.example/", "rotate_secret": 1}, "rotate_secret"),
     ({"url": "https://x.example/", "secret": "mine"}, "secret")],
)  # fmt: skip
def test_bad_endpoints_name_the_field(api: APIClient, tenant: Tenant, body: dict[str, Any], field: str) -> None:
    assert field in field_errors(api.put("/api/v1/delivery-endpoint", body, format="json"))
    assert not DeliveryEndpoint.objects.filter(tenant=tenant).exists()


def test_the_returned_secret_verifies_what_is_sent(api: APIClient, tenant: Tenant, receiver: Receiver) -> None:
    secret = api.put("/api/v1/delivery-endpoint", {"url": receiver.url}, format="json").json()["secret"]
    answered_cluster(tenant, members=1)
    receiver.script.append(Reply(200))

    deliveries_send_due()

    [got] = receiver.received
    assert webhook_signature_verify(secret=secret, header=got.headers["convo-signature"], body=got.body)
    body = api.get(f"/api/v1/deliveries/{got.json['delivery_id']}").json()
    assert body["status"] == "delivered" and body["attempts"] == 1 and body["delivered_at"] is not None
