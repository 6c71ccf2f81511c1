"""Alerts: seed 000's thresholds and an embedding-lag bound, evaluated every minute by a
django-q2 schedule (``convo.monitoring.tasks.alerts_evaluate_task``).

An alert is an episode: raised when its rule starts firing (one ``Alert`` row), left alone while
it keeps firing, resolved when it stops; the next firing is a new episode. At most one episode per
rule is open (a partial unique index, and evaluations take an advisory lock so two never race).
Raised and resolved episodes are POSTed to ``ALERT_WEBHOOK_URL`` when set, after the commit;
a webhook that fails is logged and never retried (the admin and the API still show the alert).
"""

from __future__ import annotations

import json
import logging
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from convo.monitoring.models import Alert
from convo.monitoring.stats import cache_stats, queue_stats
from convo.monitoring.timings import timing_window_percentiles

logger = logging.getLogger(__name__)

#: rule -> (operation, setting) for the p95 latency rules.
_LATENCY_RULES = {
    "ingest_ack_p95": ("ingest_ack", "ALERT_INGEST_ACK_P95_MS"),
    "embedding_p95": ("embedding_call", "ALERT_EMBEDDING_P95_MS"),
    "batch_insert_p95": ("batch_insert", "ALERT_BATCH_INSERT_P95_MS"),
}
ALERT_RULES = (*_LATENCY_RULES, "cache_hit_rate", "queue_size", "embedding_lag")
# Any constant: the key of the advisory lock that serialises evaluations.
_LOCK_KEY = 0x636F6E766F_A1


@dataclass(frozen=True)
class RuleReading:
    rule: str
    firing: bool
    value: float | None
    threshold: float
    message: str
    # False when the figure could not be read (the timing store is down): the rule's open
    # episode is then left as it is, neither resolved nor raised again.
    known: bool = True


def alert_rules_read() -> list[RuleReading]:
    """Every enabled rule's current reading (a threshold of 0 disables its rule)."""
    readings: list[RuleReading] = []
    window: int = settings.ALERT_WINDOW_MINUTES
    min_samples: int = settings.ALERT_MIN_SAMPLES
    try:
        latency: dict[str, tuple[float | None, int]] | None = timing_window_percentiles(window=window, quantile=0.95)
    except Exception as exc:
        logger.warning("alert rules: the timings cannot be read: %s", exc)
        latency = None
    for rule, (operation, setting) in _LATENCY_RULES.items():
        threshold: float = getattr(settings, setting)
        if threshold <= 0:
            continue
        if latency is None:
            readings.append(RuleReading(rule, firing=False, value=None, threshold=threshold, message="", known=False))
            continue
        p95, samples = latency.get(operation, (None, 0))
        firing = p95 is not None and samples >= min_samples and p95 > threshold
        readings.append(
            RuleReading(
                rule=rule,
                firing=firing,
                value=p95,
                threshold=threshold,
                message=f"{operation} p95 over the last {window} min is {p95} ms "
                f"(threshold {threshold:g} ms, {samples} timings)",
            )
        )
    min_rate: float = settings.ALERT_CACHE_HIT_RATE_MIN
    if min_rate > 0:
        cache = cache_stats(days=1)
        lookups = cache.hot_hits + cache.durable_hits + cache.misses
        rate = cache.hit_rate
        readings.append(
            RuleReading(
                rule="cache_hit_rate",
                firing=rate is not None and lookups >= settings.ALERT_CACHE_MIN_LOOKUPS and rate < min_rate,
                value=rate,
                threshold=min_rate,
                message=f"embedding-cache hit rate today is {rate} over {lookups} lookups (minimum {min_rate:g})",
            )
        )
    max_size: int = settings.ALERT_QUEUE_SIZE_MAX
    max_lag: float = settings.ALERT_EMBEDDING_LAG_SECONDS
    if max_size > 0 or max_lag > 0:
        queues = queue_stats(include_failed=False)
        pending = sum(queue.pending for queue in queues)
        ages = [queue.oldest_pending_seconds for queue in queues if queue.oldest_pending_seconds is not None]
        lag = max(ages) if ages else None
        if max_size > 0:
            readings.append(
                RuleReading(
                    rule="queue_size",
                    firing=pending > max_size,
                    value=float(pending),
                    threshold=float(max_size),
                    message=f"{pending} items wait for embedding (threshold {max_size})",
                )
            )
        if max_lag > 0:
            readings.append(
                RuleReading(
                    rule="embedding_lag",
                    firing=lag is not None and lag > max_lag,
                    value=lag,
                    threshold=max_lag,
                    message=f"the oldest pending item has waited {lag} s (threshold {max_lag:g} s)",
                )
            )
    return readings


@dataclass
class AlertChanges:
    raised: list[Alert] = field(default_factory=list)
    resolved: list[Alert] = field(default_factory=list)


def alerts_evaluate(*, now: datetime | None = None) -> AlertChanges:
    """Read every rule; raise an episode for each rule that fires with none open, resolve the open
    episode of each rule that no longer fires (or was turned off). Then post the changes to the
    webhook. Safe to run concurrently and repeatedly: a rule that keeps firing raises once."""
    readings = {reading.rule: reading for reading in alert_rules_read()}
    moment = now or timezone.now()
    changes = AlertChanges()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        open_alerts = {alert.rule: alert for alert in Alert.objects.filter(resolved_at__isnull=True)}
        for rule, reading in readings.items():
            if reading.known and reading.firing and rule not in open_alerts:
                changes.raised.append(
                    Alert.objects.create(
                        rule=rule,
                        raised_at=moment,
                        value=reading.value if reading.value is not None else 0.0,
                        threshold=reading.threshold,
                        message=reading.message,
                    )
                )
        for rule, alert in open_alerts.items():
            current = readings.get(rule)
            if current is None or (current.known and not current.firing):
                alert.resolved_at = moment
                alert.save(update_fields=["resolved_at"])
                changes.resolved.append(alert)
    for alert in changes.raised:
        alert_webhook_post(alert=alert, event="raised")
    for alert in changes.resolved:
        alert_webhook_post(alert=alert, event="resolved")
    return changes


def alerts_open_rules() -> set[str]:
    return set(Alert.objects.filter(resolved_at__isnull=True).values_list("rule", flat=True))


def alert_payload(*, alert: Alert, event: str) -> dict[str, object]:
    return {
        "event": event,
        "id": alert.pk,
        "rule": alert.rule,
        "value": alert.value,
        "threshold": alert.threshold,
        "message": alert.message,
        "raised_at": alert.raised_at.isoformat(),
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
    }


def alert_webhook_post(*, alert: Alert, event: str) -> bool:
    """POST one change as JSON to ``ALERT_WEBHOOK_URL`` within ``ALERT_WEBHOOK_TIMEOUT_SECONDS``.
    Returns whether a 2xx came back; never raises (an alert must not fail its evaluation)."""
    url: str = settings.ALERT_WEBHOOK_URL
    if not url:
        return False
    if not url.startswith(("http://", "https://")):
        logger.warning("ALERT_WEBHOOK_URL must be an http:// or https:// URL; %s %s not posted", alert.rule, event)
        return False
    body = json.dumps(alert_payload(alert=alert, event=event)).encode()
    request = urllib.request.Request(  # noqa: S310 - an operator's setting, http(s) checked below
        url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "convo-alerts"}
    )
    try:
        with urllib.request.urlopen(request, timeout=settings.ALERT_WEBHOOK_TIMEOUT_SECONDS) as response:  # noqa: S310
            status = int(response.status)
    except Exception as exc:
        logger.warning("alert webhook for %s %s failed: %s", alert.rule, event, exc)
        return False
    if not 200 <= status < 300:
        logger.warning("alert webhook for %s %s answered %s", alert.rule, event, status)
        return False
    return True
