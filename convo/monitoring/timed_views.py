"""``TimedViewMixin``: time DRF views request to response as one operation.

It wraps ``dispatch``, so authentication, parsing, the work and the error handling are all
inside the timing. A response of 500 or more (503 backpressure included) counts as a failure,
a 4xx as a success: the operation answered, the client was wrong.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from django.http import HttpRequest, HttpResponseBase

from convo.monitoring.timings import timing_record


class TimedViewMixin:
    #: The operation's name (``convo.monitoring.timings.OPERATIONS``).
    timing_operation: ClassVar[str]
    #: Only these viewset actions are timed (None: every request), and only with these methods.
    timing_actions: ClassVar[frozenset[str] | None] = None
    timing_methods: ClassVar[frozenset[str]] = frozenset({"POST"})

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        started = time.perf_counter()
        ok = False
        try:
            response: HttpResponseBase = super().dispatch(request, *args, **kwargs)  # type: ignore[misc]
            ok = response.status_code < 500
            return response
        finally:
            if request.method in self.timing_methods and (
                self.timing_actions is None or getattr(self, "action", None) in self.timing_actions
            ):
                timing_record(operation=self.timing_operation, seconds=time.perf_counter() - started, ok=ok)
