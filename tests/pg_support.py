"""A fresh PostgreSQL database per test, on the server at ``PHONEHOME_TEST_PG``
(default ``postgresql://postgres@127.0.0.1:5432/postgres``, the one `.ci/run`
prepares); tests that need one skip, saying why, when no server answers."""

from __future__ import annotations

import contextlib
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
    """``pg_url`` through a PgBouncer of the test's own (see :func:`pgbouncer`)."""
    with pgbouncer(pg_url) as url:
        yield url


@contextlib.contextmanager
def pgbouncer(url: str) -> Iterator[str]:
    """``url`` through a PgBouncer of the caller's own in transaction pooling mode, with
    one server connection for every client (so clients' statements meet on it); skips,
    saying why, when Debian's ``pgbouncer`` is not installed."""
    binary = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if not binary:
        pytest.skip("pgbouncer is not installed (Debian's package: apt-get install pgbouncer)")
    parts = urlsplit(url)
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
        yield urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}", query=""))
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


PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


class PgCluster:
    """A PostgreSQL cluster of the test's own (Debian's ``initdb`` / ``pg_ctl``), on its
    own port and socket dir, so a test may stop, restart (``-m immediate``) and kill it,
    and fill its connection slots. Runs as the ``postgres`` user when the test runs as
    root (the server refuses root). Never the shared server on 5432."""

    def __init__(self, max_connections: int = 40) -> None:
        if not PG_BIN:
            pytest.skip("Debian's postgresql package is not installed (no initdb)")
        self.bin = PG_BIN[-1]
        # Its own directory, which the postgres user can reach (pytest's are private).
        home = self.home = Path(tempfile.mkdtemp(prefix="phonehome-pgcluster-"))
        self.data = home / "data"
        self.port = _free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            if not _user_exists("postgres"):
                pytest.skip("running as root and there is no postgres user to run a server as")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        home.mkdir(parents=True, exist_ok=True)
        home.chmod(0o755)
        if self.as_user:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(home, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        (self.data / "postgresql.auto.conf").write_text(
            f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{home}'\nmax_connections = {max_connections}\n"
            "superuser_reserved_connections = 0\n"
            # Only the server dies in these tests, never the machine: a write the OS
            # has is safe without fsync. A commit, though, must be in the WAL when
            # acknowledged, or an immediate restart would lose it.
            "fsync = off\nfull_page_writes = off\n"
        )
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self.as_user, str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=self.home,
        )
        if done.returncode != 0:
            pytest.fail(f"{tool} {' '.join(args)} failed: {done.stderr[-400:]}")

    def url(self, database: str = "postgres", **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}" + (
            f"?{query}" if query else ""
        )

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.home / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart_immediate(self) -> None:
        """The server dies as in a crash (no checkpoint, clients cut), then recovers."""
        self.stop("immediate")
        self.start()

    def admin(self, database: str = "postgres") -> Any:
        import psycopg

        return psycopg.connect(self.url(database), autocommit=True, connect_timeout=10)

    def new_database(self) -> str:
        name = f"phonehome_{uuid.uuid4().hex[:10]}"
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return name

    def close(self) -> None:
        with contextlib.suppress(BaseException):
            self.stop("immediate")
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PgCluster]:
    """A cluster of this test module's own (see :class:`PgCluster`)."""
    pytest.importorskip("psycopg")
    cluster = PgCluster()
    try:
        yield cluster
    finally:
        cluster.close()
