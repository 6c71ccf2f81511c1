"""Create the demo tenant, its API key and a staff user, and print how to use them.

Idempotent: a second run finds them and prints the same credentials. Credentials come from the
environment when given (CONVO_DEMO_API_KEY, CONVO_ADMIN_USERNAME, CONVO_ADMIN_PASSWORD);
otherwise they are generated once and kept, readable only by their owner, in
``<CONVO_DATA_DIR>/demo-credentials.json`` (the API key is stored hashed in the database, so the
file is the only place the plain key lives).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from conversations.models import Tenant, TenantAPIKey
from conversations.services.tenants import tenant_api_key_create, tenant_create


class Command(BaseCommand):
    help = "Create (or find) the demo tenant, its API key and a staff user, and print them."

    def handle(self, *args: Any, **options: Any) -> None:
        credentials_path = Path(settings.CONVO_DATA_DIR) / "demo-credentials.json"
        saved = _read(credentials_path)
        with transaction.atomic():
            tenant = Tenant.objects.filter(slug="demo").first() or tenant_create(name="Demo", slug="demo")
            api_key = os.environ.get("CONVO_DEMO_API_KEY") or saved.get("api_key", "")
            if not api_key or not _usable(api_key, tenant):
                if api_key and os.environ.get("CONVO_DEMO_API_KEY"):
                    _, api_key = tenant_api_key_create(tenant=tenant, name="demo", key=api_key)
                else:
                    _, api_key = tenant_api_key_create(tenant=tenant, name="demo")
            username = os.environ.get("CONVO_ADMIN_USERNAME") or saved.get("admin_username", "admin")
            password = (
                os.environ.get("CONVO_ADMIN_PASSWORD") or saved.get("admin_password") or secrets.token_urlsafe(12)
            )
            _ensure_staff(username, password)
        _write(credentials_path, {"api_key": api_key, "admin_username": username, "admin_password": password})
        self.stdout.write(
            f"demo tenant: {tenant.slug}\n"
            f"  API key:   {api_key}\n"
            f"  try:       curl -s -X POST http://127.0.0.1:8000/api/v1/messages "
            f"-H 'Authorization: Api-Key {api_key}' -H 'Content-Type: application/json' "
            '-d \'{"user_id": "u1", "session_id": "s1", "text": "How much is it?"}\'\n'
            f"staff user:  {username} / {password}\n"
            f"(kept in {credentials_path})"
        )


def _usable(key: str, tenant: Tenant) -> bool:
    prefix = key.partition(".")[0]
    found = TenantAPIKey.objects.get_usable_keys().filter(prefix=prefix, tenant=tenant).first()
    return found is not None and found.is_valid(key)


def _ensure_staff(username: str, password: str) -> None:
    user_model = get_user_model()
    user = user_model.objects.filter(username=username).first()
    if user is None:
        user_model.objects.create_superuser(username=username, password=password, email="")
    elif not user.check_password(password):
        user.set_password(password)
        user.save(update_fields=["password"])


def _read(path: Path) -> dict[str, str]:
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def _write(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(values, handle, indent=2)
