"""Helpers for the tests of the SQLite state store: a store on a fresh file, and
children that see the file system as an unprivileged user would."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from phonehome_plugin.state.backends import open_store
from phonehome_plugin.state.store import Store

FORK = multiprocessing.get_context("fork")
NOBODY = 65534


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("phonehome_plugin")
    ]


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(tmp_path)
    yield opened
    opened.close()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged child can reach (pytest's tmp_path is private to us)."""
    path = Path(tempfile.mkdtemp(prefix="phonehome-store-"))
    path.chmod(0o755)
    yield path
    for sub in path.rglob("*"):
        if sub.is_dir():
            sub.chmod(0o755)
    shutil.rmtree(path)


def _in_child(
    scenario: Callable[[Path], dict[str, Any]], data_dir: Path, unprivileged: bool, out: Connection
) -> None:
    if unprivileged and os.geteuid() == 0:  # root ignores file modes: be nobody
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    warnings: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage())

    logging.getLogger("phonehome_plugin").addHandler(Collect())
    out.send({**scenario(data_dir), "warnings": warnings})


def run_child(
    scenario: Callable[[Path], dict[str, Any]], data_dir: Path, unprivileged: bool = False
) -> dict[str, Any]:
    """Run ``scenario(data_dir)`` in a forked child (as nobody, if asked); its findings."""
    reader, writer = FORK.Pipe(duplex=False)
    child = FORK.Process(target=_in_child, args=(scenario, data_dir, unprivileged, writer))
    child.start()
    assert reader.poll(30), "the child died or hung"
    result: dict[str, Any] = reader.recv()
    child.join(10)
    assert child.exitcode == 0
    return result
