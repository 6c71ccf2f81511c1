"""The monitoring tables: shared timing histograms (when the store is the database) and alerts."""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class TimingBucket(models.Model):
    """How many runs of an operation, with one outcome, fell in one histogram bucket during one
    minute, summed over every process (``convo/monitoring/timing_stores.py``)."""

    minute = models.IntegerField(help_text="Minutes since the Unix epoch (UTC).")
    operation = models.CharField(max_length=50)
    ok = models.BooleanField()
    bucket = models.SmallIntegerField()
    count = models.BigIntegerField(default=0)

    class Meta:
        app_label = "convo"
        constraints = [
            models.UniqueConstraint(fields=["minute", "operation", "ok", "bucket"], name="timing_bucket_once")
        ]

    def __str__(self) -> str:
        return f"{self.operation} {'ok' if self.ok else 'error'} @{self.minute} #{self.bucket}: {self.count}"


class Alert(models.Model):
    """One episode of an alert rule firing: raised when the rule starts firing, resolved when it
    stops. At most one episode per rule is open (a partial unique index)."""

    rule = models.CharField(max_length=50)
    raised_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    # The figure that crossed the threshold when raised, and the threshold then.
    value = models.FloatField()
    threshold = models.FloatField()
    message = models.TextField()

    class Meta:
        app_label = "convo"
        ordering = ["-raised_at", "-id"]
        indexes = [models.Index(fields=["-raised_at"], name="alert_raised")]
        constraints = [
            models.UniqueConstraint(
                fields=["rule"], condition=Q(resolved_at__isnull=True), name="alert_one_open_per_rule"
            )
        ]

    def __str__(self) -> str:
        return f"{self.rule} raised {self.raised_at:%Y-%m-%d %H:%M}"
