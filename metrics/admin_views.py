"""The staff dashboard at /admin/dashboard/: charts of the metric views and a few cheap aggregates.

Wrapped by ``admin.site.admin_view`` in convo/urls.py, so only active staff users see it (others
go to the admin login). The query string is validated by a form; a bad value is a 400 naming the
field. Every read is a selector of metrics/selectors.py, each bounded however large the data.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse

from conversations.models import Tenant
from metrics import selectors
from metrics.dashboard import dashboard_charts

MAX_DAYS = 366


class DashboardFilter(forms.Form):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.order_by("name"), required=False, empty_label="All tenants")
    days = forms.IntegerField(min_value=1, max_value=MAX_DAYS, required=False)


def metrics_dashboard(request: HttpRequest) -> HttpResponse:
    """The dashboard page; ``?tenant=<id>`` narrows it to one tenant, ``?days=`` sets the window."""
    form = DashboardFilter(request.GET)
    if not form.is_valid():
        return JsonResponse({"errors": form.errors.get_json_data()}, status=400)
    tenant: Tenant | None = form.cleaned_data["tenant"]
    days: int = form.cleaned_data["days"] or settings.METRICS_DASHBOARD_DAYS
    views_ready = selectors.metric_views_ready()
    context = {
        **admin.site.each_context(request),
        "title": "Dashboard",
        # The app list in the sidebar would squeeze the charts into one column.
        "is_nav_sidebar_enabled": False,
        "form": form,
        "tenant": tenant,
        "days": days,
        "views_ready": views_ready,
        "charts": dashboard_charts(days=days, tenant_id=tenant.pk if tenant else None, views_ready=views_ready),
        "conversation_refresh_minutes": settings.METRICS_CONVERSATION_REFRESH_MINUTES,
        "performance_refresh_minutes": settings.METRICS_PERFORMANCE_REFRESH_MINUTES,
    }
    return TemplateResponse(request, "admin/metrics/dashboard.html", context)
