"""Helpers of the monitoring tests: a child process of convo on the test database."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from django.db import connection

from convo.env import BASE_DIR


def test_database_url() -> str:
    db: dict[str, Any] = connection.settings_dict
    host = db.get("HOST") or ""
    if host.startswith("/"):
        return f"postgresql://{db['USER']}@/{db['NAME']}?host={host}&port={db['PORT']}"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgresql://{db['USER']}{password}@{host}:{db['PORT']}/{db['NAME']}"


def run_child(script: str, **environment: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (Python, after ``django.setup()``) in a new process of convo on the test
    database; raises with its output when it fails."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "convo.settings.test",
        "DATABASE_URL": test_database_url(),
        **environment,
    }
    code = "import django\ndjango.setup()\n" + script
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done
