"""Fixtures of the metric-view and dashboard tests."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from conversations.models import Channel, EmbeddingCacheStats, Message, Tenant
from conversations.services.embedding import embedding_drain
from feedback.models import Feedback
from tests.factories import TenantFactory
from tests.metrics.data import backdate, ingest, refresh_all


@dataclass
class DashboardData:
    tenant: Tenant
    other: Tenant


@pytest.fixture
def staff_user(django_user_model: type[User]) -> User:
    return django_user_model.objects.create_user(username="staff", password="staff-pass-123", is_staff=True)


@pytest.fixture
def dashboard_data(db: Any) -> DashboardData:
    """Something for every chart: two tenants' messages over two days and channels (embedded, so
    with lag, clusters and cache stats), feedback, a timing, and both views refreshed."""
    from convo.monitoring.timings import timing_record, timings_flush

    tenant = TenantFactory(name="Acme")
    other = TenantFactory(name="Globex")
    yesterday = timezone.now() - dt.timedelta(days=1)
    old = ingest(
        tenant, ["where is my card?", "my card has not arrived", "card still missing"], channel=Channel.TELEGRAM
    )
    ingest(tenant, ["how do I reset my password?", "reset password please"], channel=Channel.WEB, user="u2")
    ingest(other, ["other tenant's sms question"], channel=Channel.SMS, user="u3")
    embedding_drain(seconds=30)
    backdate(old, created_at=yesterday, embedded_after_seconds=4)
    conversation = Message.objects.get(id=old[0]).conversation
    for value in (5, 4, 4, 1):
        Feedback.objects.create(tenant=tenant, conversation=conversation, kind="rating", value=value, source="telegram")
    Feedback.objects.create(tenant=tenant, conversation=conversation, kind="thumbs", value=1, source="telegram")
    EmbeddingCacheStats.objects.update_or_create(
        model_id="chart-test", day=yesterday.date(), defaults={"hot_hits": 3, "durable_hits": 1, "misses": 4}
    )
    timing_record(operation="search", seconds=0.012, ok=True)
    timings_flush()
    refresh_all()
    return DashboardData(tenant=tenant, other=other)
