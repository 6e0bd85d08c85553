"""Fixtures for the ledger store tests: real Redis and PostgreSQL, fresh namespaces."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.services import ensure_postgres, ensure_redis


def with_query(url: str, **params: str) -> str:
    """Append query parameters to a URL that may already have some."""
    extra = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{url}{'&' if '?' in url else '?'}{extra}"


@pytest.fixture(scope="session")
def redis_url() -> str:
    return ensure_redis()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = ensure_postgres()
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as exc:
        from tests.support.services import unavailable

        unavailable(f"PostgreSQL at {url} refused a connection: {exc}")
    return url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    import redis

    prefix = f"gptimg-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def postgres_table(postgres_url: str) -> Iterator[str]:
    """A table name of this test's own; its tables are dropped afterwards."""
    import psycopg

    table = f"gptimg_test_{uuid.uuid4().hex[:12]}"
    yield table
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_counters, {table}_effects")
