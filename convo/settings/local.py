"""Development defaults: what `make run` uses."""

from __future__ import annotations

from convo.settings.base import *  # noqa: F403
from convo.settings.base import SECRET_KEY as _SECRET_KEY

DEBUG = True
# A fixed development key is fine here: production.py refuses to start without a real one.
SECRET_KEY = _SECRET_KEY or "convo-development-only-not-secret"
# Webhooks to a receiver on this machine or network are fine while developing.
DELIVERY_ALLOW_PRIVATE_ADDRESSES = True
