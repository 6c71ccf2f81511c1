"""django-q2 entry points of monitoring (thin: the work is in the services)."""

from __future__ import annotations

from convo.monitoring.alerts import alerts_evaluate


def alerts_evaluate_task() -> int:
    """Evaluate the alert rules (schedule "convo: evaluate alerts", every minute). Returns the
    number of episodes raised or resolved."""
    changes = alerts_evaluate()
    return len(changes.raised) + len(changes.resolved)
