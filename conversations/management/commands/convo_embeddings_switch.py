"""Change the embedding model, side by side: build the new model's space while search keeps using
the active one, then switch search over in one transaction (docs/embeddings.md).

Exit codes: 0 switched (or ready with ``--no-activate``, or a dry run); 1 an error (nothing
switched; run again to resume); 3 stopped by ``--max-pages`` (run again to resume); 130
interrupted (Ctrl-C; run again to resume).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TextIO
from uuid import UUID

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.db import DatabaseError, connection

from clustering.services.spaces import clusters_follow_space
from conversations.embeddings import config_for_this_process, embedder_from_config
from conversations.embeddings.base import Embedder, EmbeddingError, EmbeddingUnavailable
from conversations.models import EmbeddingSpace, SpaceState
from conversations.services.embedding import FIRST_ID, embedding_backfill_missing, embedding_backfill_page
from conversations.services.embedding_kick import embedding_kick
from conversations.services.embedding_kinds import embedding_kinds
from conversations.services.embedding_spaces import (
    embedding_space_abandon,
    embedding_space_activate,
    embedding_space_active,
    embedding_space_building_start,
    embedding_space_embedder,
    embedding_space_index,
    embedding_space_states_sync,
    embedding_space_unindex,
    embedding_spaces_forget,
)
from convo.settings.embeddings import _BACKENDS, _DEFAULT_MODELS

STOPPED = 3
INTERRUPTED = 130
# Held for the whole run (session advisory lock, released if the process dies): one switch at a time.
_LOCK_KEY = 0x636F6E766F5357  # "convoSW"

# Command option -> backend option, as convo/settings/embeddings.py names them. Only options
# given are stored; the backend's own defaults (the same as the settings') fill in the rest.
_OPTIONS = {
    "url": "url",
    "api_key_env": "api_key_env",
    "send_dimensions": "send_dimensions",
    "timeout_seconds": "timeout_seconds",
    "deadline_seconds": "deadline_seconds",
    "max_retries": "max_retries",
    "max_concurrency": "max_concurrency",
    "request_batch_size": "request_batch_size",
    "threads": "threads",
}


@dataclass
class PassResult:
    complete: bool = True
    stored: int = 0
    rejected: list[tuple[UUID, str]] = field(default_factory=list)


class Command(BaseCommand):
    help = (
        "Embed every conversation and message with a new model beside the active one (resumable), "
        "then switch search over to it. See docs/embeddings.md."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        model = parser.add_argument_group("the new model (as the EMBEDDINGS_* settings)")
        model.add_argument("--backend", choices=sorted(_BACKENDS))
        model.add_argument("--model", help="default: the backend's default model")
        model.add_argument("--dimensions", type=int)
        model.add_argument("--url")
        model.add_argument("--api-key-env", help="the NAME of the variable holding the API key (openai)")
        model.add_argument("--send-dimensions", action="store_true", default=None)
        model.add_argument("--timeout-seconds", type=float)
        model.add_argument("--deadline-seconds", type=float)
        model.add_argument("--max-retries", type=int)
        model.add_argument("--max-concurrency", type=int)
        model.add_argument("--request-batch-size", type=int)
        model.add_argument("--threads", type=int)
        model.add_argument(
            "--space", metavar="MODEL_ID", help="switch to an existing space with its stored config (a rollback)"
        )
        parser.add_argument("--batch-size", type=int, default=256, help="items embedded per page (default 256)")
        parser.add_argument("--dry-run", action="store_true", help="show what would happen; change nothing")
        parser.add_argument(
            "--activate",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="switch search over when the backfill is complete (default); --no-activate stops when ready",
        )
        parser.add_argument(
            "--retire-old", action="store_true", help="drop the retired spaces' HNSW indexes (their vectors stay)"
        )
        parser.add_argument("--abandon-other", action="store_true", help="retire a switch to another model under way")
        parser.add_argument(
            "--max-rejected",
            type=int,
            default=0,
            help="switch even if the new model refuses up to this many texts (they end failed); default 0",
        )
        parser.add_argument("--max-pages", type=int, help="stop after this many pages (exit 3; run again to resume)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        config, embedder = self._target(options)
        try:  # fail fast on a wrong URL, key or model, before anything is written
            embedder.embed(["convo embedding switch probe"])
        except EmbeddingError as exc:
            raise CommandError(f"{embedder.model_id} does not answer: {exc}") from exc
        if options["dry_run"]:
            self._plan(embedder)
            return
        try:
            with _one_switch_at_a_time():
                self._switch(embedder=embedder, config=config, options=options)
        except KeyboardInterrupt:
            raise CommandError(
                "interrupted: nothing is lost; run the same command again to resume", returncode=INTERRUPTED
            ) from None
        except EmbeddingUnavailable as exc:
            raise CommandError(f"the provider is unavailable ({exc}); run the same command again to resume") from exc

    # --- the steps ----------------------------------------------------------------------------

    def _switch(self, *, embedder: Embedder, config: dict[str, Any], options: dict[str, Any]) -> None:
        existing = EmbeddingSpace.objects.filter(model_id=embedder.model_id).first()
        if existing is not None and existing.state == SpaceState.ACTIVE:
            self.stdout.write(f"{existing} is already the active space")
            self._retire_old(options)
            return
        for other in EmbeddingSpace.objects.filter(state=SpaceState.BUILDING).exclude(model_id=embedder.model_id):
            if not options["abandon_other"]:
                raise CommandError(f"a switch to {other.model_id} is under way: finish it, or pass --abandon-other")
            embedding_space_abandon(space=other)
            self.stdout.write(f"abandoned the switch to {other.model_id} (now retired)")
        try:
            space = embedding_space_building_start(embedder=embedder, config=config)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"building {space} beside {embedding_space_active() or 'no active space'}")

        result = self._pass(space=space, embedder=embedder, options=options, label="backfill")
        if not result.complete:
            raise CommandError(
                f"stopped after {options['max_pages']} pages ({result.stored} vectors stored): "
                "run the same command again to resume",
                returncode=STOPPED,
            )
        if len(result.rejected) > options["max_rejected"]:
            examples = "; ".join(f"{item_id}: {error[:200]}" for item_id, error in result.rejected[:5])
            raise CommandError(
                f"{embedder.model_id} refused {len(result.rejected)} texts (e.g. {examples}). Search was not "
                f"switched. Re-run with --max-rejected {len(result.rejected)} to switch anyway (they end failed)."
            )
        self.stderr.write("building the HNSW indexes of the new space (may take a while)…")
        embedding_space_index(space=space)
        if not options["activate"]:
            self.stdout.write(f"{space.model_id} is ready: run again without --no-activate to switch search over")
            return

        old = embedding_space_activate(space=space)
        self.stdout.write(f"search now uses {space.model_id}" + (f"; {old.model_id} is retired" if old else ""))
        try:  # items a worker finished against the old space in the last moments before the swap
            unlimited = {**options, "max_pages": None}
            catch_up = self._pass(space=space, embedder=embedder, options=unlimited, label="catch-up")
        finally:
            now_done, back = embedding_space_states_sync(space=space)
            clusters_follow_space(space=space)
            embedding_spaces_forget()
        if back:
            embedding_kick(force=True)
        self.stdout.write(
            f"done: {result.stored + catch_up.stored} vectors stored, {now_done} items now done, "
            f"{back} handed back to the worker"
        )
        self._retire_old(options)

    def _retire_old(self, options: dict[str, Any]) -> None:
        if not options["retire_old"]:
            return
        for space in EmbeddingSpace.objects.filter(state=SpaceState.RETIRED):
            embedding_space_unindex(space=space)
            self.stdout.write(f"dropped the HNSW indexes of {space.model_id} (its vectors stay, for a rollback)")

    def _pass(self, *, space: EmbeddingSpace, embedder: Embedder, options: dict[str, Any], label: str) -> PassResult:
        """One keyset pass over every item (message, conversation, knowledge entry) without a
        vector in ``space``."""
        result = PassResult()
        pages = 0
        for kind in (each.name for each in embedding_kinds()):
            progress = Progress(self.stderr, f"{label} {kind}s", embedding_backfill_missing(kind=kind, space=space))
            after = FIRST_ID
            try:
                while True:
                    if options["max_pages"] is not None and pages >= options["max_pages"]:
                        result.complete = False
                        return result
                    page = embedding_backfill_page(
                        kind=kind, space=space, embedder=embedder, after=after, limit=options["batch_size"]
                    )
                    pages += 1
                    progress.advance(page.read)
                    result.stored += page.stored
                    result.rejected += page.rejected
                    if page.last_id is None or page.read < options["batch_size"]:
                        break
                    after = page.last_id
            finally:
                progress.close()
        return result

    def _plan(self, embedder: Embedder) -> None:
        """What a real run would do, read-only."""
        active = embedding_space_active()
        space = EmbeddingSpace.objects.filter(model_id=embedder.model_id).first()
        others = EmbeddingSpace.objects.filter(state=SpaceState.BUILDING).exclude(model_id=embedder.model_id)
        self.stdout.write(f"active space: {active or 'none'}")
        for other in others:
            self.stdout.write(f"a switch to {other.model_id} is under way (needs --abandon-other)")
        if space is not None and space.state == SpaceState.ACTIVE:
            self.stdout.write(f"{space} is already active: nothing to do")
            return
        what = "create" if space is None else {"building": "resume", "retired": "revive"}[space.state]
        self.stdout.write(f"would {what} the space of {embedder.model_id} ({embedder.dimensions} dimensions)")
        for kind in embedding_kinds():
            missing = embedding_backfill_missing(kind=kind.name, space=space) if space else kind.items.objects.count()
            self.stdout.write(f"{kind.name}s to embed: {missing} (blank ones are skipped)")

    def _target(self, options: dict[str, Any]) -> tuple[dict[str, Any], Embedder]:
        """The new model's EMBEDDINGS-shaped config and its embedder."""
        try:
            if options["space"]:
                space = EmbeddingSpace.objects.filter(model_id=options["space"]).first()
                if space is None:
                    raise CommandError(f"no embedding space {options['space']!r}")
                embedder = embedding_space_embedder(space=space)
                return dict(space.config), embedder
            if not options["backend"] or options["dimensions"] is None:
                raise CommandError("give --backend and --dimensions (or --space MODEL_ID)")
            config = {
                "BACKEND": _BACKENDS[options["backend"]],
                "MODEL": options["model"] or _DEFAULT_MODELS[options["backend"]],
                "DIMENSIONS": options["dimensions"],
                "OPTIONS": {name: options[arg] for arg, name in _OPTIONS.items() if options[arg] is not None},
            }
            return config, embedder_from_config(config_for_this_process(config))
        except ImproperlyConfigured as exc:
            raise CommandError(f"the new model is misconfigured: {exc}") from exc


class Progress:
    """A one-line progress bar on a terminal stream: count/total, percent, rate, ETA (no dependency)."""

    def __init__(self, stream: OutputWrapper | TextIO, label: str, total: int) -> None:
        self.stream, self.label, self.total = stream, label, total
        self.done = 0
        self.started = self.shown = time.monotonic()
        self._show()

    def advance(self, count: int) -> None:
        self.done += count
        if time.monotonic() - self.shown >= 0.2:
            self._show()

    def close(self) -> None:
        self._show()
        self._write("\n")

    def _show(self) -> None:
        self.shown = time.monotonic()
        elapsed = max(self.shown - self.started, 1e-9)
        rate = self.done / elapsed
        total = max(self.total, self.done)  # items that arrived during the pass
        percent = 100 * self.done / total if total else 100
        eta = _duration((total - self.done) / rate) if rate > 0 else "?"
        self._write(f"\r{self.label}: {self.done:,}/{total:,} {percent:3.0f}% {rate:,.0f}/s ETA {eta}   ")

    def _write(self, text: str) -> None:
        if isinstance(self.stream, OutputWrapper):
            self.stream.write(text, style_func=lambda message: message, ending="")
        else:
            self.stream.write(text)
        self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


@contextmanager
def _one_switch_at_a_time() -> Iterator[None]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [_LOCK_KEY])
        if not cursor.fetchone()[0]:
            raise CommandError("another convo_embeddings_switch is running")
    try:
        yield
    finally:
        # After a Ctrl-C the connection may be unusable; the lock then ends with the session.
        with suppress(DatabaseError), connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [_LOCK_KEY])
