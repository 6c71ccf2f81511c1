"""Fixtures of the embedding tests: a fake provider per test, and a sleep that only records."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from tests.embeddings.fake_provider import Api, FakeProvider


class RecordingSleep:
    """Stands in for ``time.sleep`` so backoff tests assert the waits without waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def start_provider() -> Iterator[Callable[..., FakeProvider]]:
    servers: list[FakeProvider] = []

    def start(api: Api, *, dimensions: int = 8, api_key: str | None = None) -> FakeProvider:
        server = FakeProvider(api, dimensions=dimensions, api_key=api_key)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
