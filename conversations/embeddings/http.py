"""A small JSON-over-HTTP client shared by the HTTP embedding backends.

Contract (what ``post_json`` promises its caller):

* it returns the decoded JSON body of a 2xx answer, or raises one of the typed errors of
  ``conversations.embeddings.base`` and nothing else;
* connection errors, timeouts, 429 and 5xx are retried up to ``max_retries`` times with
  exponential backoff and full jitter (``uniform(0, min(max_delay, base_delay * 2**attempt))``);
  a ``Retry-After`` (or OpenAI's ``retry-after-ms``) header replaces the jittered delay, capped
  at ``max_delay``. When retries run out: ``EmbeddingUnavailable``;
* any other non-2xx answer (400, 401, 404, an unexpected redirect…) is ``EmbeddingRejected``
  carrying the provider's own error message, because sending the same request again cannot help;
* a 2xx body that is not JSON is ``EmbeddingInvalid``.

Budget: ``timeout_seconds`` bounds each socket operation (connect, each read) of one attempt, and
``deadline_seconds`` bounds one ``post_json`` call as a whole: a retry whose wait would end past
the deadline is not attempted (``EmbeddingUnavailable`` at once), so a worker's batch is never
held far beyond its own batch timeout by a provider that keeps asking to come back later.

Concurrency: every attempt holds a slot of a process-wide ``BoundedSemaphore`` shared by all
clients of the same origin and limit, so however many threads embed at once, one process never
has more than ``max_concurrency`` requests in flight to one provider. Backoff sleeps happen outside
the slot. The bound is per process: N worker processes may have N times ``max_concurrency`` in flight.

Proxies: the standard ``HTTP(S)_PROXY`` / ``NO_PROXY`` environment variables are honoured (urllib).
Redirects are not followed: an embeddings endpoint that redirects is misconfigured, and following
it would resend the API key to wherever it points.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from typing import IO, Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from conversations.embeddings.base import EmbeddingInvalid, EmbeddingRejected, EmbeddingUnavailable

logger = logging.getLogger(__name__)

#: A larger answer is refused rather than read into memory (128 x 3072 floats as JSON is ~8 MB).
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: How much of an unparseable error body is quoted in an exception message.
_QUOTE_CHARS = 300

Sleep = Callable[[float], None]
Uniform = Callable[[float, float], float]
Clock = Callable[[], float]
ErrorMessage = Callable[[Any], "str | None"]


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often and how long to wait before trying a request again."""

    max_retries: int = 4  # retries after the first attempt
    base_delay: float = 0.5  # seconds; the first retry waits up to this long
    max_delay: float = 20.0  # seconds; no single wait (jittered or Retry-After) is longer

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.base_delay < 0 or self.max_delay < 0:
            raise ImproperlyConfigured(f"retry settings must not be negative: {self}")

    def backoff(self, attempt: int, *, uniform: Uniform = random.uniform) -> float:
        """The full-jitter wait after failed attempt number ``attempt`` (0-based)."""
        return uniform(0.0, min(self.max_delay, self.base_delay * (2**attempt)))


def retry_after_seconds(headers: Mapping[str, str] | Message, *, now: datetime | None = None) -> float | None:
    """The wait a provider asked for, in seconds, or None. Understands ``retry-after-ms`` (OpenAI),
    and ``Retry-After`` as delta-seconds or as an HTTP-date. A malformed value is ignored."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            value = float(millis) / 1000.0
        except ValueError:
            value = -1.0
        if value >= 0:
            return value
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        return seconds if seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" parses naive; an HTTP-date is always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(tz=UTC))).total_seconds())


_slots: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


def concurrency_slots(origin: str, limit: int) -> threading.BoundedSemaphore:
    """The process-wide semaphore bounding requests in flight to ``origin`` (same limit, same
    semaphore: two embedders of one provider, say during a model switch, share the bound)."""
    if limit < 1:
        raise ImproperlyConfigured(f"max_concurrency must be at least 1, got {limit}")
    key = (origin, limit)
    with _slots_lock:
        slots = _slots.get(key)
        if slots is None:
            slots = _slots[key] = threading.BoundedSemaphore(limit)
        return slots


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


@dataclass(frozen=True)
class _Retry:
    reason: str
    retry_after: float | None = None


class JsonHttpClient:
    """POSTs JSON to one provider with the timeouts, retries and concurrency bound described in
    the module docstring. Safe to share between threads."""

    def __init__(
        self,
        *,
        base_url: str,
        provider: str,
        error_message: ErrorMessage,
        headers: Mapping[str, str] | None = None,
        timeout_seconds: float = 10.0,
        deadline_seconds: float | None = None,
        max_concurrency: int = 4,
        retry: RetryPolicy | None = None,
        sleep: Sleep = time.sleep,
        uniform: Uniform = random.uniform,
        clock: Clock = time.monotonic,
    ) -> None:
        parts = urlsplit(base_url)
        try:
            parts.port  # noqa: B018 (raises ValueError for a port that is not a number in range)
        except ValueError:
            parts = parts._replace(scheme="")
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ImproperlyConfigured(f"{provider} URL must be http(s)://host[:port][/path], got {base_url!r}")
        if timeout_seconds <= 0:
            raise ImproperlyConfigured(f"{provider} timeout must be positive, got {timeout_seconds}")
        if deadline_seconds is not None and deadline_seconds <= 0:
            raise ImproperlyConfigured(f"{provider} deadline must be positive, got {deadline_seconds}")
        self.provider = provider
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self._base = base_url.rstrip("/")
        self._error_message = error_message
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "convo-embeddings",
            **(headers or {}),
        }
        self._timeout = timeout_seconds
        self._deadline = deadline_seconds
        self._retry = retry or RetryPolicy()
        self._slots = concurrency_slots(self.origin, max_concurrency)
        self._sleep = sleep
        self._uniform = uniform
        self._clock = clock
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler(), _NoRedirect())

    def __repr__(self) -> str:  # never show the headers: they may carry an API key
        return f"<JsonHttpClient {self.provider} {self._base}>"

    def post_json(self, path: str, payload: Any) -> Any:
        """POST ``payload`` to ``base_url + path``; the decoded JSON answer (see module docstring)."""
        body = json.dumps(payload, allow_nan=False).encode()
        url = self._base + path
        deadline = None if self._deadline is None else self._clock() + self._deadline
        attempts = self._retry.max_retries + 1
        for attempt in range(attempts):
            timeout = self._timeout
            if deadline is not None:
                timeout = min(timeout, max(deadline - self._clock(), 0.001))
            outcome = self._attempt(url, body, timeout)
            if not isinstance(outcome, _Retry):
                return outcome
            if attempt == attempts - 1:
                raise EmbeddingUnavailable(f"{outcome.reason} (gave up after {attempts} attempts)")
            if outcome.retry_after is not None:
                delay = min(outcome.retry_after, self._retry.max_delay)
            else:
                delay = self._retry.backoff(attempt, uniform=self._uniform)
            if deadline is not None and self._clock() + delay > deadline:
                raise EmbeddingUnavailable(
                    f"{outcome.reason} (gave up after {attempt + 1} attempts: waiting {delay:.1f}s more "
                    f"would pass the {self._deadline:g}s deadline)"
                )
            logger.info("%s: %s; retrying in %.2fs", self.provider, outcome.reason, delay)
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(self, url: str, body: bytes, timeout: float) -> Any:
        """One request: the decoded 2xx body, a ``_Retry``, or a raised typed error."""
        request = urllib.request.Request(url, data=body, headers=self._headers, method="POST")  # noqa: S310
        try:
            with self._slots:
                try:
                    with self._opener.open(request, timeout=timeout) as response:
                        status, headers, raw = response.status, response.headers, _read(response)
                except urllib.error.HTTPError as error:
                    with error:
                        status, headers, raw = error.code, error.headers, _read(error)
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets are OSErrors
            return _Retry(f"{self.provider} unreachable at {self.origin}: {_describe(exc)}")
        if 200 <= status < 300:
            try:
                return json.loads(raw)
            except ValueError as exc:
                raise EmbeddingInvalid(f"{self.provider} answered {status} with malformed JSON: {exc}") from exc
        message = self._message(raw)
        if status == 429 or status >= 500:
            return _Retry(f"{self.provider} answered {status}: {message}", retry_after_seconds(headers))
        if 300 <= status < 400:
            message = f"unexpected redirect to {headers.get('Location')!r}"
        raise EmbeddingRejected(f"{self.provider} rejected the request ({status}): {message}")

    def _message(self, raw: bytes) -> str:
        """The provider's own error message, or the start of the body when it has none."""
        try:
            message = self._error_message(json.loads(raw))
        except (ValueError, TypeError, KeyError, AttributeError):
            message = None
        if message:
            return message
        text = raw.decode("utf-8", "replace").strip()
        return text[:_QUOTE_CHARS] or "no error message"


def _read(response: IO[bytes]) -> bytes:
    raw = response.read(MAX_RESPONSE_BYTES + 1)
    if len(raw) > MAX_RESPONSE_BYTES:
        raise EmbeddingInvalid(f"answer larger than {MAX_RESPONSE_BYTES} bytes")
    return raw


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)  # URLError wraps the socket error
    if isinstance(reason, BaseException):
        exc = reason
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
