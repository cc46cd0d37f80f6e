"""Operators in control: every combination of the three switches and the three modes,
observed from outside (a real loopback server counting the connections it accepts,
the data dir, the thread list, the signals' receivers, the state file), and the
first-start notice.

Any "off" wins: ``DO_NOT_TRACK`` (anything but empty, ``0`` or ``false``),
``MAESTROHUB_PHONEHOME_ENABLED=false`` and ``modules.phonehome.enabled: false``. When
on, ``send`` sends; ``log`` builds, checks, logs and records every report and sends
nothing; ``offline`` keeps every report for ``phonehome export`` and sends nothing.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import e2e_support
import operator_support
import pytest
from e2e_support import settle
from operator_support import (
    CountingServer,
    Traffic,
    config_of,
    listing,
    make,
    pending_bodies,
    phonehome_section,
    read_only,
    running,
    short_life,
)

from hookspecs import signals
from phonehome_plugin.cli import commands
from phonehome_plugin.config.settings import OutboxLimits
from phonehome_plugin.reports import schema
from phonehome_plugin.state import history
from phonehome_plugin.state.outbox import Outbox
from phonehome_plugin.state.store import FILENAME
from phonehome_plugin.testing.simhost import SimHost

acme_distribution = e2e_support.acme_distribution  # fixture
counting_server = operator_support.counting_server  # fixture

DNT_VALUES = (None, "1", "0", "false")
ENV_VALUES = (None, "false", "true")
CONFIG_ENABLED = (True, False, None)  # None: the key is absent from config.yaml
MODES = ("send", "log", "offline")
NOTICE_WORDS = ("telemetry is on", "modules.phonehome.enabled: false", "DO_NOT_TRACK")


def expected_off_reason(dnt: str | None, env: str | None, enabled: bool | None) -> str | None:
    """The spec restated: the first "off", in this order, is the reason; else on."""
    if dnt not in (None, "", "0", "false"):
        return "DO_NOT_TRACK"
    if env == "false":
        return "MAESTROHUB_PHONEHOME_ENABLED"
    if enabled is False:
        return "modules.phonehome.enabled is false"
    return None


def _label(value: object) -> str:
    return "absent" if value is None else str(value)


CASES = [
    pytest.param(
        dnt,
        env,
        enabled,
        mode,
        id=f"DNT={_label(dnt)}-ENV={_label(env)}-enabled={_label(enabled)}-{mode}",
    )
    for dnt, env, enabled, mode in itertools.product(DNT_VALUES, ENV_VALUES, CONFIG_ENABLED, MODES)
]


@dataclass(frozen=True)
class Observed:
    """What one start of the host did, seen from outside the plugin."""

    connections: int
    connects: int
    files_running: list[str] | None
    files_after: list[str] | None
    threads: frozenset[str]
    receivers: frozenset[str]
    instance_id: str | None
    reports_built: int


OFF = Observed(0, 0, None, None, frozenset(), frozenset(), None, 0)


class Watcher(logging.Handler):
    """Puts the plugin's log lines into the server's event list, so their order is known."""

    def __init__(self, traffic: Traffic) -> None:
        super().__init__(logging.DEBUG)
        self.traffic = traffic
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.lines.append(message)
        self.traffic.note(f"LOG {message}")


@pytest.fixture
def watcher(counting_server: CountingServer) -> Iterator[Watcher]:
    handler = Watcher(counting_server.traffic)
    logger = logging.getLogger("phonehome_plugin")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(previous)


@pytest.fixture
def outgoing(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every address this process connects a socket to (on top of the loopback guard)."""
    addresses: list[Any] = []
    guarded = socket.socket.connect

    def counting(self: socket.socket, address: Any) -> None:
        addresses.append(address)
        guarded(self, address)

    monkeypatch.setattr(socket.socket, "connect", counting)
    return addresses


def _observe(host: SimHost, server: CountingServer, outgoing: list[Any], on: bool) -> Observed:
    """Drive one start through a short life; look at everything while it runs, and after."""
    thread_objects_before = set(threading.enumerate())
    # The worker's threads live only while there is work, so every thread that
    # ran is recorded as it starts, not looked for afterwards.
    # Threads, not names: a thread started before (a test server's) may begin running
    # only now, on a loaded machine, and meet the hook; it is not one of the host's.
    ran: set[threading.Thread] = set()

    def starting(frame: Any, event: str, arg: Any) -> None:
        ran.add(threading.current_thread())
        sys.setprofile(None)

    threading.setprofile(starting)
    try:
        observed = _observe_running(host, server, outgoing, on, thread_objects_before, ran)
    finally:
        threading.setprofile(None)
    return observed


def _observe_running(
    host: SimHost,
    server: CountingServer,
    outgoing: list[Any],
    on: bool,
    thread_objects_before: set[threading.Thread],
    ran: set[threading.Thread],
) -> Observed:
    with running(host):
        host.save_connection("mqtt")
        host.tick()
        if on:
            settle(host)
        host.create_user("admin@example.com")
        host.run_executions(10)
        host.run_for(2 * 3600, step=600)
        if on:
            settle(host)
        threads = frozenset(
            t.name for t in {*threading.enumerate(), *ran} if t not in thread_objects_before
        )
        receivers = frozenset(s.name for s in signals.ALL if list(s.receivers_for(host.app)))
        files_running = listing(host.data_dir)
        instance_id, built = None, 0
        if (host.data_dir / FILENAME).exists():
            with read_only(host.data_dir) as view:
                instance_id = view.get("instance_id")
                pending = Outbox(view, OutboxLimits()).pending()
                built = len(pending) + len(history.recent(view, 100))
    assert not any(list(s.receivers_for(host.app)) for s in signals.ALL), (
        "a receiver outlived shutdown"
    )
    new_workers = [
        t
        for t in threading.enumerate()
        if t.name == "phonehome-worker" and t not in thread_objects_before
    ]
    assert new_workers == [], "the worker outlived shutdown"
    return Observed(
        server.traffic.accepted,
        len(outgoing),
        files_running,
        listing(host.data_dir),
        threads,
        receivers,
        instance_id,
        built,
    )


@pytest.mark.parametrize(("dnt", "env", "enabled", "mode"), CASES)
def test_every_switch_combination_in_every_mode(
    dnt: str | None,
    env: str | None,
    enabled: bool | None,
    mode: str,
    counting_server: CountingServer,
    watcher: Watcher,
    outgoing: list[Any],
    acme_distribution: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if dnt is not None:
        monkeypatch.setenv("DO_NOT_TRACK", dnt)
    if env is not None:
        monkeypatch.setenv("MAESTROHUB_PHONEHOME_ENABLED", env)
    section = phonehome_section(counting_server, mode=mode)
    if enabled is not None:
        section["enabled"] = enabled
    data = tmp_path / "data"  # not created here: "off" must not create it either
    off_reason = expected_off_reason(dnt, env, enabled)

    host = make(config_of(section), data)
    observed = _observe(host, counting_server, outgoing, on=off_reason is None)

    off_lines = [line for line in watcher.lines if "off:" in line]
    if off_reason is not None:
        assert observed == OFF, "off: no socket, file, thread, receiver or instance id"
        assert [t.name for t in threading.enumerate() if t.name.startswith("phonehome")] == []
        assert len(off_lines) == 1, "the reason telemetry is off is logged exactly once"
        assert off_reason in off_lines[0]
        return
    assert off_lines == []
    assert observed.files_running is not None and FILENAME in observed.files_running
    assert observed.files_after == [FILENAME]
    assert "phonehome-worker" in observed.threads
    assert observed.receivers == {s.name for s in signals.ALL}
    assert observed.instance_id is not None and uuid.UUID(observed.instance_id).version == 4
    assert observed.reports_built >= 3, "startup, first user and periodic reports"
    if mode == "send":
        assert observed.connections >= 4, "reports and the location lookup went out"
        assert observed.connects == observed.connections
        assert counting_server.traffic.geoip_requests == 1
        assert len(counting_server.traffic.bodies) == observed.reports_built
    else:
        assert (observed.connections, observed.connects) == (0, 0), f"mode {mode} connected"


def test_a_config_that_leaves_telemetry_off_logs_one_error_and_creates_nothing(
    counting_server: CountingServer, watcher: Watcher, outgoing: list[Any], tmp_path: Path
) -> None:
    section = phonehome_section(counting_server, enabeld=False)  # a typo must not leave it on
    host = make(config_of(section), tmp_path / "data")

    observed = _observe(host, counting_server, outgoing, on=False)

    assert observed == OFF
    [line] = [line for line in watcher.lines if "off:" in line]
    assert "modules.phonehome.enabeld" in line


# log and offline ---------------------------------------------------------------------


def test_log_mode_logs_every_report_records_it_as_logged_and_sends_nothing(
    counting_server: CountingServer, watcher: Watcher, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with running(make(config_of(phonehome_section(counting_server, mode="log")), data)) as host:
        short_life(host)
        with read_only(data) as view:
            events = history.recent(view, 100)
            pending = Outbox(view, OutboxLimits()).pending()

    prefix = "phonehome: mode log, report not sent: "
    logged = [json.loads(line[len(prefix) :]) for line in watcher.lines if line.startswith(prefix)]
    assert [r["trigger"] for r in logged][:2] == ["startup", "first_user"]
    assert "periodic" in {r["trigger"] for r in logged}
    for report in logged:
        assert schema.errors(report) == []
        assert report["location"] == dict.fromkeys(("country", "city", "region", "isp"))
    assert pending == []
    by_id = {event.report_id: event for event in events}
    assert sorted(by_id) == sorted(r["report_id"] for r in logged)
    assert {event.result for event in events} == {"logged"}
    assert counting_server.traffic.accepted == 0


def test_offline_mode_keeps_every_report_for_export_and_sends_nothing(
    counting_server: CountingServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    section = phonehome_section(counting_server, mode="offline")
    with running(make(config_of(section), data)) as host:
        short_life(host)
    exported = tmp_path / "pending.jsonl"

    code = commands.main(["export", str(exported), "--data-dir", str(data)], out=io.StringIO())

    assert code == commands.OK
    lines = exported.read_bytes().splitlines()
    reports = [json.loads(line) for line in lines]
    assert [r["trigger"] for r in reports][:2] == ["startup", "first_user"]
    assert [r["sequence"] for r in reports] == list(range(1, len(reports) + 1))
    assert all(schema.errors(r) == [] for r in reports)
    assert pending_bodies(data) == lines, "export leaves them in the outbox"
    with read_only(data) as view:
        assert history.recent(view, 10) == []
    assert counting_server.traffic.accepted == 0

    # Back to send mode: what offline mode kept is delivered, oldest first.
    send = phonehome_section(counting_server)
    with running(make(config_of(send), data)) as host:
        host.tick()
        settle(host)
    assert counting_server.traffic.bodies[: len(lines)] == lines


# The first-start notice -----------------------------------------------------------------


def _notices(watcher: Watcher) -> list[str]:
    return [line for line in watcher.lines if all(w in line for w in NOTICE_WORDS)]


def test_the_notice_comes_before_any_request_and_only_at_an_installations_first_start(
    counting_server: CountingServer, watcher: Watcher, tmp_path: Path
) -> None:
    config = config_of(phonehome_section(counting_server))
    data = tmp_path / "data"
    with running(make(config, data)) as host:
        short_life(host)

    [notice] = _notices(watcher)
    assert counting_server.url in notice, "it says where reports go"
    words = " ".join(notice.split())  # the notice is wrapped to 80 columns
    for collected in ("hostname", "public IP", "first admin email", "execution"):
        assert collected in words, "it says what is collected"
    assert "MAESTROHUB_PHONEHOME_ENABLED=false" in notice, "it says how to turn it off"
    events = counting_server.traffic.events
    first_request = next(i for i, e in enumerate(events) if not e.startswith("LOG "))
    assert events.index(f"LOG {notice}") < first_request

    restarted_at = e2e_support.START + timedelta(hours=3)  # a new start is a later started_at
    with running(make(config, data, at=restarted_at)) as host:  # same installation
        host.tick()
        settle(host)
    assert len(_notices(watcher)) == 1
    assert len(counting_server.traffic.bodies) > 3

    with running(make(config, tmp_path / "other")) as host:  # another installation
        host.tick()
        settle(host)
    assert len(_notices(watcher)) == 2


def test_an_installation_first_started_with_telemetry_off_gets_the_notice_when_turned_on(
    counting_server: CountingServer,
    watcher: Watcher,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = config_of(phonehome_section(counting_server))
    data = tmp_path / "data"
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    with running(make(config, data)) as host:
        host.tick()
    assert _notices(watcher) == []
    assert listing(data) is None

    monkeypatch.delenv("DO_NOT_TRACK")
    with running(make(config, data)) as host:
        host.tick()
        settle(host)
    assert len(_notices(watcher)) == 1
    events = counting_server.traffic.events
    assert events.index(f"LOG {_notices(watcher)[0]}") < events.index(f"POST {'/v1/reports'}")


# The location lookup ---------------------------------------------------------------------


def test_the_location_is_looked_up_once_a_day_of_host_clock_in_send_mode(
    counting_server: CountingServer, tmp_path: Path
) -> None:
    config = config_of(phonehome_section(counting_server))
    with running(make(config, tmp_path / "data")) as host:
        short_life(host)
        assert counting_server.traffic.geoip_requests == 1
        host.run_for(21 * 3600, step=1800)  # 23 h after the lookup
        settle(host)
        assert counting_server.traffic.geoip_requests == 1, "cached for a day"
        host.run_for(2 * 3600, step=1800)  # 25 h after it
        settle(host)
        assert counting_server.traffic.geoip_requests == 2, "looked up again after a day"
    reports = [json.loads(body) for body in counting_server.traffic.bodies]
    assert all(r["location"]["city"] == "Munich" for r in reports)


def test_an_empty_geoip_url_turns_the_lookup_off(
    counting_server: CountingServer, tmp_path: Path
) -> None:
    config = config_of(phonehome_section(counting_server, geoip_url=""))
    with running(make(config, tmp_path / "data")) as host:
        short_life(host)
    assert counting_server.traffic.geoip_requests == 0
    reports = [json.loads(body) for body in counting_server.traffic.bodies]
    assert reports and all(r["system"]["public_ip"] is None for r in reports)
