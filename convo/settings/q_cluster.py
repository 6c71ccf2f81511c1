"""django-q2: the ORM broker by default (transactional with the data); Redis when asked for."""

from __future__ import annotations

from typing import Any

from convo.env import env
from convo.settings.cache import REDIS_URL

Q_BROKER: str = env.str("Q_BROKER", default="redis" if REDIS_URL else "orm")

Q_CLUSTER: dict[str, Any] = {
    "name": "convo",
    "workers": env.int("Q_WORKERS", default=2),
    "timeout": env.int("Q_TIMEOUT_SECONDS", default=120),
    "retry": env.int("Q_RETRY_SECONDS", default=150),
    "max_attempts": env.int("Q_MAX_ATTEMPTS", default=5),
    "queue_limit": 50,
    "bulk": 10,
    "catch_up": False,
    "save_limit": 1000,
}
if Q_BROKER == "redis":
    Q_CLUSTER["django_redis"] = "default"
else:
    Q_CLUSTER["orm"] = "default"
