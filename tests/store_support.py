"""Fixtures over both state backends: the same test on a SQLite file and on a
PostgreSQL database (which skips, saying why, when no server answers). Named apart
(``any_``) from the SQLite-only ``store`` of other modules; a module of
backend-shared tests names them ``opener`` and ``store`` for itself."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from phonehome_plugin.state.backends import open_store
from phonehome_plugin.state.postgres import PgStore
from phonehome_plugin.state.store import Store

Opener = Callable[[], Store]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens another store on one installation's state, on each backend in turn."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    opened: list[Store] = []

    def open_one() -> Store:
        store = open_store(tmp_path, url)
        assert not store.memory
        assert isinstance(store, PgStore) == (url is not None)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def any_store(any_opener: Opener) -> Store:
    """A store on each backend in turn."""
    return any_opener()
