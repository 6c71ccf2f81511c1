"""Split one ``embed`` call into provider requests and put the answers back in order.

Providers cap how many inputs one request may carry (and a huge request is a huge retry), so an
HTTP embedder sends ``batch_size`` texts per request, up to ``max_workers`` requests at once.
Whatever order the requests finish in, vector ``i`` of the result belongs to text ``i``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait

from conversations.embeddings.base import EmbeddingUnavailable

EmbedBatch = Callable[[list[str]], list[list[float]]]


def embed_in_batches(
    texts: Sequence[str], *, batch_size: int, max_workers: int, embed_batch: EmbedBatch
) -> list[list[float]]:
    """``embed_batch`` over consecutive slices of ``texts``, concatenated in input order.

    ``embed_batch`` must return exactly one vector per text of its slice (the backends validate
    each answer before returning it). On failure, requests not yet started are cancelled and one
    error is raised: ``EmbeddingUnavailable`` if any request hit one (the whole call is worth
    retrying later), otherwise the error of the earliest failing slice.
    """
    if batch_size < 1 or max_workers < 1:
        raise ValueError(f"batch_size and max_workers must be at least 1, got {batch_size}, {max_workers}")
    batches = [list(texts[start : start + batch_size]) for start in range(0, len(texts), batch_size)]
    if len(batches) <= 1 or max_workers == 1:
        return [vector for batch in batches for vector in embed_batch(batch)]

    with ThreadPoolExecutor(max_workers=min(max_workers, len(batches)), thread_name_prefix="convo-embed") as pool:
        futures: list[Future[list[list[float]]]] = [pool.submit(embed_batch, batch) for batch in batches]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        if any(future.exception() is not None for future in done):
            for future in pending:
                future.cancel()
    # Leaving the pool waited for the requests already running, so every error is known here.
    errors = [error for future in futures if not future.cancelled() and (error := future.exception()) is not None]
    if errors:
        raise next((error for error in errors if isinstance(error, EmbeddingUnavailable)), errors[0])
    return [vector for future in futures for vector in future.result()]
