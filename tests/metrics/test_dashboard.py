"""The staff dashboard: who may see it, what it draws, the tenant filter, and what it reads."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from metrics.matviews import METRIC_VIEWS

pytestmark = pytest.mark.django_db

URL = "/admin/dashboard/"
CHART_KEYS = [
    "ingest",
    "embedding-lag",
    "embedding-state",
    "batches",
    "embedding-latency",
    "feedback",
    "timings",
    "cache-hit-rate",
    "clusters",
]
# The tables that grow without bound: the dashboard reads their aggregates, never them.
BIG_TABLES = ("conversations_message", "conversations_conversation", "feedback_feedback", "embedding")


def figures(html: str) -> dict[str, str]:
    """Each chart's markup by its key."""
    return dict(re.findall(r'<figure class="chart" data-chart="([^"]+)">(.*?)</figure>', html, re.DOTALL))


def marks(svg: str) -> int:
    """Bars, line points and lines drawn in a chart."""
    return len(re.findall(r'class="(?:bar|point|line)"', svg))


def test_url_and_admin_index_link(client, staff_user):
    assert reverse("admin-dashboard") == URL
    client.force_login(staff_user)
    assert f'href="{URL}"' in client.get("/admin/").content.decode()


def test_anonymous_and_non_staff_users_go_to_the_login(client, django_user_model):
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    client.force_login(django_user_model.objects.create_user(username="plain", password="x-pass-123"))
    assert client.get(URL).status_code == 302


def test_every_chart_draws(client, staff_user, dashboard_data):
    client.force_login(staff_user)
    response = client.get(URL)
    assert response.status_code == 200
    charts = figures(response.content.decode())
    assert list(charts) == CHART_KEYS
    for key, markup in charts.items():
        assert "<svg" in markup, key
        assert marks(markup) > 0, key
    assert "views-not-ready" not in response.content.decode()


def test_before_the_first_refresh_the_page_says_so_and_draws_what_it_can(client, staff_user):
    client.force_login(staff_user)
    html = client.get(URL).content.decode()
    assert 'id="views-not-ready"' in html
    assert set(figures(html)) == {"timings", "cache-hit-rate", "clusters"}


def test_tenant_filter_shows_only_that_tenant(client, staff_user, dashboard_data):
    client.force_login(staff_user)
    everyone = figures(client.get(URL).content.decode())
    assert "sms" in everyone["ingest"]
    assert "Globex" in everyone["clusters"]

    one = figures(client.get(URL, {"tenant": dashboard_data.tenant.pk}).content.decode())
    assert "sms" not in one["ingest"]
    assert "telegram" in one["ingest"]
    assert "Globex" not in one["clusters"]
    other = figures(client.get(URL, {"tenant": dashboard_data.other.pk}).content.decode())
    assert "No data yet" in other["feedback"]  # Acme's feedback is not Globex's


def test_feedback_chart_counts_ratings(client, staff_user, dashboard_data):
    client.force_login(staff_user)
    feedback = figures(client.get(URL).content.decode())["feedback"]
    assert "4 · feedback: 2<" in feedback
    assert "thumbs up · feedback: 1<" in feedback
    assert "3 · feedback" not in feedback  # no bar for a count of zero


@pytest.mark.parametrize(
    ("query", "field"),
    [({"tenant": "999999"}, "tenant"), ({"tenant": "x"}, "tenant"), ({"days": "0"}, "days"), ({"days": "367"}, "days")],
)
def test_bad_filters_are_a_400_naming_the_field(client, staff_user, query, field):
    client.force_login(staff_user)
    response = client.get(URL, query)
    assert response.status_code == 400
    assert list(response.json()["errors"]) == [field]


def test_reads_only_views_and_bounded_tables(client, staff_user, dashboard_data, django_assert_max_num_queries):
    client.force_login(staff_user)
    client.get(URL)  # warm the session and permission caches
    with CaptureQueriesContext(connection) as queries, django_assert_max_num_queries(16):
        assert client.get(URL, {"tenant": dashboard_data.tenant.pk}).status_code == 200
    sql = " ".join(query["sql"] for query in queries.captured_queries)
    for view in METRIC_VIEWS:
        assert view in sql
    for table in BIG_TABLES:
        assert f'"{table}' not in sql and f" {table}" not in sql, table
