"""django-q2 entry points of clustering. Thin: they take ids and call one service each."""

from __future__ import annotations

import time

from django.conf import settings


def send_due_deliveries() -> int:
    """Send the webhook deliveries that are due (see clustering.services.webhooks), batch after
    batch until none is due or ``DELIVERY_DRAIN_SECONDS`` have passed. Returns how many were
    claimed. Safe to run any number of times at once (claims skip each other's rows)."""
    from clustering.services.webhooks import deliveries_send_due

    deadline = time.monotonic() + settings.DELIVERY_DRAIN_SECONDS
    total = 0
    while time.monotonic() < deadline:
        claimed = deliveries_send_due()
        if not claimed:
            break
        total += claimed
    return total
