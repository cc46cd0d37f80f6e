"""A fresh PostgreSQL database per test, on the server at ``PHONEHOME_TEST_PG``
(default ``postgresql://postgres@127.0.0.1:5432/postgres``, the one `.ci/run`
prepares); tests that need one skip, saying why, when no server answers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

ADMIN_URL = os.environ.get("PHONEHOME_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def database_url(name: str) -> str:
    """:data:`ADMIN_URL` with its database replaced by ``name``."""
    parts = urlsplit(ADMIN_URL)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _admin() -> Any:
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed (pip install -e '.[test]')")
    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.Error as error:
        where = urlsplit(ADMIN_URL).netloc.rpartition("@")[2]
        pytest.skip(
            f"no PostgreSQL server answers at {where} ({' '.join(str(error).split())[:160]})"
        )


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a new, empty database, dropped after the test."""
    admin = _admin()
    name = f"phonehome_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield database_url(name)
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
