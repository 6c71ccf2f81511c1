"""The ``convo`` app's models, defined with the code that owns them."""

from convo.monitoring.models import Alert, TimingBucket

__all__ = ["Alert", "TimingBucket"]
