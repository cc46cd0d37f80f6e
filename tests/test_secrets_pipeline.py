"""Nothing secret in logs or state, end to end.

A secret is planted in each configured URL (the endpoint's user info and ``?token=``, the
location service's ``?key=``, the proxy's credentials, the PostgreSQL ``state_url``'s
password) and header (a relay's ``Authorization`` and token), and in a collector's
``repr``. The plugin then runs through a startup report that fails once (503) and is
retried, a failing lookup, a successful one and a periodic report, with every logger at
DEBUG (urllib3's request lines included). No log line, traceback or stored byte (the
state file, its WAL; the PostgreSQL database's every table) may hold any of the secrets,
nor the base64 form of a user info as it travels in an ``Authorization`` header.
"""

from __future__ import annotations

import base64
import io
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_support import GEOIP, START, tick
from faultservers import FaultServer, Linger, Proxy, Reply, Tls, make_tls

from hookspecs import hookimpl
from phonehome_plugin.cli import commands
from phonehome_plugin.testing.simclock import SimClock
from phonehome_plugin.testing.simhost import SimHost

SECRETS = {
    "endpoint password": "SECRET-ENDPOINT-PASS-3141",
    "endpoint token": "SECRET-ENDPOINT-TOKEN-2718",
    "prerelease token": "SECRET-PRERELEASE-TOKEN-1618",
    "geoip key": "SECRET-GEO-KEY-1414",
    "proxy password": "SECRET-PROXY-PASS-1732",
    "state_url password": "SECRET-PG-PASS-2236",
    "authorization header": "SECRET-HEADER-VALUE-6931",
    "relay header": "SECRET-RELAY-TOKEN-5772",
    "collector password": "SECRET-COLLECTOR-PASS-4669",
}
USERINFO = {
    "endpoint": f"ingest:{SECRETS['endpoint password']}",
    "proxy": f"proxyuser:{SECRETS['proxy password']}",
    "state_url": f"postgres:{SECRETS['state_url password']}",
}


def needles() -> dict[str, bytes]:
    """Every form in which a secret could leak: as is, and a user info in base64."""
    found = {name: value.encode() for name, value in SECRETS.items()}
    for name, userinfo in USERINFO.items():
        found[f"{name} user info in base64"] = base64.b64encode(userinfo.encode())
    return found


class Leaky:
    """A collector holding a credential, whose ``repr`` would show it and whose collect()
    fails with it in the message."""

    name = "acme.leaky"

    def __init__(self) -> None:
        self.password = SECRETS["collector password"]

    def __repr__(self) -> str:
        return f"Leaky(password={self.password!r})"

    def collect(self) -> dict[str, Any]:
        raise RuntimeError(f"cannot log in with {self.password}")


class Nameless:
    """Not a collector (no ``name``): register() refuses it, quoting it."""

    def __init__(self) -> None:
        self.password = SECRETS["collector password"]

    def __repr__(self) -> str:
        return f"Nameless(password={self.password!r})"

    def collect(self) -> dict[str, Any]:
        return {}


class Module:
    """A third-party MaestroHub module registering its collectors."""

    @hookimpl(optionalhook=True)
    def phonehome_register_collectors(self, register: Any) -> None:
        register(Leaky())
        register(Nameless())


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    return make_tls(tmp_path)


@pytest.fixture
def servers(tls: Tls) -> Iterator[tuple[FaultServer, FaultServer, Proxy]]:
    # The endpoint fails a whole send series (503s), then accepts.
    endpoint = FaultServer([Reply(503)] * 6, then=Reply(202), tls=tls.server)
    # The location service fails once (500), then answers.
    geo = FaultServer([Linger(500, b"oops")], then=Linger(200, _geoip()))
    proxy = Proxy()
    yield endpoint, geo, proxy
    for server in (endpoint, geo, proxy):
        server.close()


def _geoip() -> bytes:
    import json

    return json.dumps(GEOIP).encode()


def section(
    endpoint: FaultServer, geo: FaultServer, proxy: Proxy, tls: Tls, **extra: Any
) -> dict[str, Any]:
    base = endpoint.url.replace("https://", f"https://{USERINFO['endpoint']}@")
    return {
        "endpoint": f"{base}?token={SECRETS['endpoint token']}&site=7",
        "prerelease_endpoint": f"{endpoint.url}?token={SECRETS['prerelease token']}",
        "geoip_url": f"{geo.geoip_url}?key={SECRETS['geoip key']}&fields=status,query",
        "proxy": f"http://{USERINFO['proxy']}@127.0.0.1:{proxy.port}",
        "ca_bundle": str(tls.ca_file),
        "headers": {
            "Authorization": f"Bearer {SECRETS['authorization header']}",
            "X-Relay-Token": SECRETS["relay header"],
        },
        "timeout": 2.0,
        **extra,
    }


def drive(config: dict[str, Any], data_dir: Path) -> SimHost:
    """A host start through a retried startup report, a failed and a good lookup, and
    a periodic report an hour later."""
    host = SimHost(
        {"modules": {"phonehome": config}},
        data_dir,
        clock=SimClock(START),
        extra_plugins=(Module(),),
    )
    host.start()
    tick(host)
    # Ten-minute ticks, each handled before the next (each send series takes real time):
    # past the retry's not-before time and the next periodic slots.
    for _ in range(16):
        tick(host, 600)
    host.shutdown()
    return host


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every record as a handler would write it (message, traceback, stack)."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(record) for record in caplog.records) + caplog.text


def leaks(haystack: bytes) -> list[str]:
    return [name for name, needle in needles().items() if needle in haystack]


def test_no_secret_reaches_a_log_line_or_the_state_file(
    servers: tuple[FaultServer, FaultServer, Proxy],
    tls: Tls,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoint, geo, proxy = servers
    caplog.set_level(logging.DEBUG)
    data_dir = tmp_path / "data"
    config = section(endpoint, geo, proxy, tls)
    drive(config, data_dir)

    # The run did what it should, secrets and all: they reached their servers.
    assert len(endpoint.reports) >= 2, "the startup report (retried) and a periodic one"
    first = endpoint.requests[0]
    assert SECRETS["endpoint token"] in first.target
    assert first.headers["x-relay-token"] == SECRETS["relay header"]
    assert SECRETS["geoip key"] in geo.requests[0].target
    assert geo.connections >= 2, "a failed lookup and a good one"
    assert any("urllib3" in r.name for r in caplog.records), "DEBUG lines of the HTTP library"
    assert any("sending report" in r.getMessage() for r in caplog.records), "the 503 was said"
    assert any("location lookup failed" in r.getMessage() for r in caplog.records)
    assert any("failed to register its collectors" in r.getMessage() for r in caplog.records)
    assert all(
        "acme.leaky" in r["diagnostics"]["collector_errors"] for r in endpoint.reports.values()
    )

    text = logged_text(caplog)
    assert leaks(text.encode()) == [], text
    stored = sorted(path for path in data_dir.rglob("*") if path.is_file())
    assert stored, "the state file exists"
    for path in stored:
        assert leaks(path.read_bytes()) == [], path.name

    # And what the operator's command shows of it.
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump({"modules": {"phonehome": config}}))
    for output in ("--json", None):
        out = io.StringIO()
        argv = ["status", "--config", str(config_file), "--data-dir", str(data_dir)]
        assert commands.main(argv + ([output] if output else []), out=out) == commands.OK
        assert "/v1/reports" in out.getvalue()
        assert leaks(out.getvalue().encode()) == [], out.getvalue()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_state_url_is_said_without_its_password(
    servers: tuple[FaultServer, FaultServer, Proxy],
    tls: Tls,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("psycopg")
    endpoint, geo, proxy = servers
    caplog.set_level(logging.DEBUG)
    state_url = (
        f"postgresql://{USERINFO['state_url']}@127.0.0.1:{_closed_port()}/phonehome"
        f"?application_name={SECRETS['state_url password']}"
    )
    host = SimHost(
        {"modules": {"phonehome": section(endpoint, geo, proxy, tls, state_url=state_url)}},
        tmp_path / "data",
        clock=SimClock(START),
    )
    host.start()
    tick(host)
    host.shutdown()
    assert any("state" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert leaks(logged_text(caplog).encode()) == []
    assert endpoint.connections == 0


@pytest.mark.postgres
def test_no_secret_reaches_a_log_line_or_the_postgresql_state(
    servers: tuple[FaultServer, FaultServer, Proxy],
    tls: Tls,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    pg_url: str,
) -> None:
    import psycopg

    endpoint, geo, proxy = servers
    caplog.set_level(logging.DEBUG)
    # The test server trusts loopback, so any password is accepted: a planted one.
    state_url = pg_url.replace("postgresql://postgres@", f"postgresql://{USERINFO['state_url']}@")
    assert SECRETS["state_url password"] in state_url
    drive(section(endpoint, geo, proxy, tls, state_url=state_url), tmp_path / "data")

    assert len(endpoint.reports) >= 2
    assert leaks(logged_text(caplog).encode()) == []
    with psycopg.connect(pg_url) as connection:
        tables = [
            row[0]
            for row in connection.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        ]
        assert tables, "the plugin's tables exist"
        for table in tables:
            rows = connection.execute(f'SELECT * FROM "{table}"').fetchall()
            assert leaks(repr(rows).encode()) == [], table
    # Nothing of the installation's state went to the data dir either.
    data_dir = tmp_path / "data"
    for path in (p for p in data_dir.rglob("*") if p.is_file()):
        assert leaks(path.read_bytes()) == [], path.name
