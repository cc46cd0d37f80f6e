"""A fresh PostgreSQL database per test, on the server at ``PHONEHOME_TEST_PG``
(default ``postgresql://postgres@127.0.0.1:5432/postgres``, the one `.ci/run`
prepares); tests that need one skip, saying why, when no server answers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def pgbouncer_url(pg_url: str) -> Iterator[str]:
    """``pg_url`` through a PgBouncer of the test's own in transaction pooling mode, with
    one server connection for every client (so clients' statements meet on it); skips,
    saying why, when Debian's ``pgbouncer`` is not installed."""
    binary = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if not binary:
        pytest.skip("pgbouncer is not installed (Debian's package: apt-get install pgbouncer)")
    parts = urlsplit(pg_url)
    database = parts.path.lstrip("/")
    user = parts.username or "postgres"
    port = _free_port()
    # Its own directory, readable by the user PgBouncer runs as (it refuses root).
    home = Path(tempfile.mkdtemp(prefix="phonehome-pgbouncer-"))
    home.chmod(0o755)
    (home / "users.txt").write_text(f'"{user}" ""\n')
    (home / "pgbouncer.ini").write_text(
        f"[databases]\n{database} = host={parts.hostname} port={parts.port or 5432} "
        f"dbname={database} user={user}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {home / 'users.txt'}\n"
        "pool_mode = transaction\ndefault_pool_size = 1\nmax_client_conn = 100\n"
        f"logfile = {home / 'pgbouncer.log'}\n"
    )
    command = [binary, str(home / "pgbouncer.ini")]
    if os.geteuid() == 0:
        import pwd

        runs_as = pwd.getpwnam("postgres" if _user_exists("postgres") else "nobody")
        os.chown(home, runs_as.pw_uid, runs_as.pw_gid)  # its log file goes here
        command[1:1] = ["-u", runs_as.pw_name]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if not _listening(port, process):
            error = process.stderr.read().decode(errors="replace") if process.stderr else ""
            pytest.skip(f"pgbouncer did not start: {' '.join(error.split())[:200]}")
        yield urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}"))
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(home, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _listening(port: int, process: subprocess.Popen[bytes]) -> bool:
    """Whether ``process`` accepts connections on ``port`` (waits while it is starting;
    a readiness wait, not a measurement: it ends as soon as the port answers)."""
    for _ in range(600):
        if process.poll() is not None:
            return False
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False
