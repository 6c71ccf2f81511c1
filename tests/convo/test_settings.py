"""Environment-driven settings: production refuses a weak secret and passes check --deploy; the
database runs on a bounded pool with a statement timeout; REDIS_URL switches the cache."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.db import connection

from convo.env import BASE_DIR

STRONG_SECRET = "k" * 20 + "Zx9-Qw8_Er7.Ty6!Ui5@Op4#As3$Df2%Gh1^Jk0&Lz" + "m" * 10


def run_manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "CONVO_DATA_DIR": str(settings.CONVO_DATA_DIR), **env}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=environment, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("secret", ["", "short", "django-insecure-" + "x" * 60, "a" * 60])
def test_production_refuses_to_start_without_a_real_secret(secret):
    result = run_manage("check", DJANGO_SETTINGS_MODULE="convo.settings.production", SECRET_KEY=secret)
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_production_passes_check_deploy():
    result = run_manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DJANGO_SETTINGS_MODULE="convo.settings.production",
        SECRET_KEY=STRONG_SECRET,
        ALLOWED_HOSTS="convo.example.com",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_database_settings_bound_the_pool_and_set_timeouts():
    options = settings.DATABASES["default"]["OPTIONS"]
    assert options["pool"]["max_size"] == 20
    assert options["pool"]["timeout"] == 2.0
    assert "statement_timeout=10000" in options["options"]


@pytest.mark.django_db
def test_the_connection_carries_the_timeout_and_application_name():
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "10s"
        cursor.execute("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()")
        assert cursor.fetchone()[0] == "convo"
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        assert cursor.fetchone() is not None


def test_redis_url_selects_django_redis(redis_url):
    code = "from convo.settings import cache; print(cache.CACHES['default']['BACKEND'])"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=BASE_DIR,
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "django_redis.cache.RedisCache"
    without = subprocess.run(
        [sys.executable, "-c", code],
        cwd=BASE_DIR,
        env={**os.environ, "REDIS_URL": ""},
        capture_output=True,
        text=True,
        check=True,
    )
    assert without.stdout.strip() == "django.core.cache.backends.locmem.LocMemCache"


@pytest.mark.redis
def test_the_redis_cache_round_trips(redis_url):
    from django_redis.cache import RedisCache

    cache = RedisCache(redis_url, {"KEY_PREFIX": "convo-tests", "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1}})
    cache.set("probe", {"a": 1}, timeout=10)
    assert cache.get("probe") == {"a": 1}
    cache.delete("probe")
    assert cache.get("probe") is None
