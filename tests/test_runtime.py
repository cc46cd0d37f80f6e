"""The host-facing side: cheap ticks, hooks that never raise, fork safety."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from e2e_support import NEXT_SLOT, Endpoint, make_host, phonehome_config, settle, tick

from phonehome_plugin.runtime import Runtime
from phonehome_plugin.testing.simhost import SimHost


@pytest.fixture
def host(endpoint: Endpoint, tmp_path: Path) -> Any:
    started = make_host(phonehome_config(endpoint, geoip_url=""), tmp_path)
    started.start()
    tick(started)
    yield started
    started.shutdown()


def _runtime(host: SimHost) -> Runtime:
    runtime = host.app.plugin_manager.get_plugin("phonehome-runtime")
    assert isinstance(runtime, Runtime)
    return runtime


def test_ticks_before_wake_at_do_not_reach_the_worker(host: SimHost) -> None:
    runtime = _runtime(host)
    handed: list[datetime] = []
    real_tick = runtime.worker.tick
    # A recorder in the method's place (restored below); list.append takes its one
    # argument positionally only, so mypy calls it no `tick` as well.
    runtime.worker.tick = handed.append  # type: ignore[method-assign, assignment]
    try:
        for _ in range(5):
            host.tick(1)
        assert handed == []
        host.tick(3600)
        assert len(handed) == 1
    finally:
        runtime.worker.tick = real_tick  # type: ignore[method-assign]


@pytest.mark.parametrize(
    "user",
    [
        {},
        {"id": "u1", "email": "a@example.com", "created_at": "2026-01-01T00:00:00Z"},
        {"id": "u1", "email": 7, "created_at": datetime(2026, 1, 1)},  # naive
        {"id": object(), "created_at": None},
    ],
)
def test_on_user_created_takes_anything_without_raising(host: SimHost, user: Any) -> None:
    host.app.plugin_manager.hook.on_user_created(app=host.app, user=user)
    settle(host)


def test_a_tick_with_an_odd_now_does_not_raise(host: SimHost) -> None:
    host.app.plugin_manager.hook.on_tick(app=host.app, now="not a datetime")
    host.app.plugin_manager.hook.on_tick(app=host.app, now=datetime(2026, 1, 1))  # naive


def test_shutdown_twice_is_harmless(host: SimHost) -> None:
    hook = host.app.plugin_manager.hook.on_shutdown
    hook(app=host.app)
    hook(app=host.app)
    assert _runtime(host).worker.wait_idle(0)  # no thread of the plugin is left


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_counts_its_own_work_and_sends(endpoint: Endpoint, host: SimHost) -> None:
    host.run_executions(40, ("completed",))
    pid = os.fork()
    if pid == 0:  # the child: a pre-forked server worker
        code = 1
        try:
            host.run_executions(25, ("failed",))
            host.tick(NEXT_SLOT)
            settle(host)
            host.shutdown()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    periodic = endpoint.by_trigger("periodic")
    assert len(periodic) == 1, "the child sent the slot's periodic report"
    by_status = periodic[0]["executions"]["by_status"]
    assert by_status["failed"] == 25
    host.clock.advance(2 * NEXT_SLOT)  # past the child's slot and the next one's jitter
    tick(host)
    latest = endpoint.reports[-1]
    assert latest["executions"]["by_status"]["completed"] == 40
    assert latest["executions"]["by_status"]["failed"] == 25, "the parent did not count the child"
    assert len(endpoint.by_trigger("startup")) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_takes_the_spare_worker_made_in_the_parent(host: SimHost) -> None:
    """The child's worker was made before the fork and never used (making one in the
    child copies every page its allocations touch); the child's own child makes one."""
    runtime = _runtime(host)
    spare = runtime._spare
    assert spare is not None and spare is not runtime.worker
    assert not spare._started and spare.store is None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        ok = runtime.worker is spare and runtime._spare is None
        grandchild = os.fork()
        if grandchild == 0:
            ok = runtime.worker is not spare and runtime.worker.store is None
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
        os.waitpid(grandchild, 0)
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    told = os.read(read, 2)
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    assert told == b"11", "child, then grandchild"
    assert runtime._spare is spare, "the parent keeps its spare for its next child"


def test_now_is_compared_without_the_wall_clock(host: SimHost) -> None:
    runtime = _runtime(host)
    assert runtime.worker.wake_at > datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    assert runtime.worker.wake_at <= datetime(2026, 3, 2, 8, 0, tzinfo=UTC) + timedelta(hours=2)


FORK_DURING_IMPORTS = """
import os, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from e2e_support import make_host, NEXT_SLOT
host = make_host({"modules": {"phonehome": {"endpoint": "http://127.0.0.1:9/r",
                  "geoip_url": ""}}}, Path(tempfile.mkdtemp()))
host.start()
host.tick()  # the worker starts importing its modules now
pid = os.fork()  # while it may still be importing
if pid == 0:
    host.tick(NEXT_SLOT)
    runtime = host.app.plugin_manager.get_plugin("phonehome-runtime")
    ok = runtime.worker.wait_idle(10) and runtime.worker.reporter is not None
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
host.shutdown()
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_during_the_workers_first_imports_leaves_the_child_working(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    tests_dir = str(Path(__file__).parent)
    for _ in range(3):  # a fresh interpreter each time, so the imports really happen
        done = subprocess.run(
            [sys.executable, "-c", FORK_DURING_IMPORTS, tests_dir],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
