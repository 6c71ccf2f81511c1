"""Send Banking77 questions to the demo tenant as inbound messages, and wake the worker.

``make run`` runs this after ``convo_bootstrap_demo`` unless ``CONVO_DEMO=false``. Idempotent: a
second run adds nothing (clustering/demo.py explains how). Nothing is fetched from the internet:
the questions ship in ``clustering/demo_data/`` and the avatars are static files of this app.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from clustering.demo import DEMO_DEFAULT_COUNT, DEMO_TENANT_SLUG, banking77_test, demo_messages_load
from conversations.models import Tenant
from convo.env import env


def default_avatar_base_url() -> str:
    """Where ``make run`` serves the app (CONVO_HOST, CONVO_PORT), as a browser on this machine
    reaches it: avatars are static files of the app itself."""
    host = env.str("CONVO_HOST", default="127.0.0.1")
    if host in {"0.0.0.0", "::", "[::]", ""}:  # noqa: S104 - a listen-on-all address, read, not bound
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{env.int('CONVO_PORT', default=8000)}"


class Command(BaseCommand):
    help = "Load Banking77 questions into the demo tenant as inbound messages from many users (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--count",
            type=int,
            default=DEMO_DEFAULT_COUNT,
            help=f"How many questions (default {DEMO_DEFAULT_COUNT}, at most {len(banking77_test()):,}).",
        )
        parser.add_argument("--tenant", default=DEMO_TENANT_SLUG, help="Slug of the tenant (default: demo).")
        parser.add_argument(
            "--avatar-base-url",
            default=None,
            help="Absolute URL the app is served at, for the senders' avatars (default: from CONVO_HOST and "
            "CONVO_PORT; empty: no avatars).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count = int(options["count"])
        available = len(banking77_test())
        if not 0 < count <= available:
            raise CommandError(f"--count must be between 1 and {available}")
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"no tenant {options['tenant']!r}: run convo_bootstrap_demo first")
        base_url = options["avatar_base_url"]
        if base_url is None:
            base_url = default_avatar_base_url()
        elif base_url and not base_url.startswith(("http://", "https://")):
            raise CommandError("--avatar-base-url must be an http(s) URL, or empty for no avatars")
        result = demo_messages_load(tenant=tenant, count=count, avatar_base_url=base_url)
        self.stdout.write(
            f"demo inbox: {result.wanted} Banking77 questions for tenant {tenant.slug} from {result.people} people "
            f"over {result.channels} channels: {result.added} added, {result.present} already there"
            + (f", {result.rejected} rejected" if result.rejected else "")
        )
        if result.pending:
            self.stdout.write(
                f"  {result.pending} wait for the worker"
                + (" (kicked)" if result.kicked else "")
                + ": their clusters appear in the admin once they are embedded"
            )
        if result.rejected:
            raise CommandError(f"{result.rejected} demo messages were rejected (their external ids are taken)")
