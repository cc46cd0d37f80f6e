"""The entry-point module: discovery, the on/off decision, and never raising into the host."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_type_hints

import pluggy
import pytest

import hookspecs.host
from hookspecs import hookimpl
from phonehome_plugin import plugin
from phonehome_plugin.runtime import Runtime
from phonehome_plugin.testing.simhost import SimApp

STARTED = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def app_of(config: Any, data_dir: Path, pm: pluggy.PluginManager) -> SimApp:
    """The host's ``app`` (the simulated host's), on ``pm``, without a host around it."""
    return SimApp("2.3.0", "core", config, None, data_dir, STARTED, pm)


@pytest.fixture
def pm() -> pluggy.PluginManager:
    manager = pluggy.PluginManager("maestrohub")
    manager.add_hookspecs(hookspecs.host)
    return manager


def _start(pm: pluggy.PluginManager, app: SimApp) -> Runtime | None:
    pm.hook.on_startup.call_historic(kwargs={"app": app})
    runtime = pm.get_plugin(plugin.RUNTIME_NAME)
    return runtime if isinstance(runtime, Runtime) else None


def _on(tmp_path: Path) -> dict[str, Any]:
    return {"modules": {"phonehome": {"endpoint": "http://127.0.0.1:9/r", "geoip_url": ""}}}


def test_the_installed_distribution_declares_the_entry_point() -> None:
    points = importlib.metadata.entry_points(group="maestrohub")
    assert [p.value for p in points if p.name == "phonehome"] == ["phonehome_plugin.plugin"]


def test_the_host_discovers_the_plugin_from_metadata(pm: pluggy.PluginManager) -> None:
    assert pm.load_setuptools_entrypoints("maestrohub") >= 1
    assert pm.get_plugin("phonehome") is plugin


def test_the_module_keeps_no_state(pm: pluggy.PluginManager, tmp_path: Path) -> None:
    before = dict(vars(plugin))
    mutable = [
        k for k, v in before.items() if isinstance(v, list | dict | set) and k != "__builtins__"
    ]
    assert mutable == []
    pm.register(plugin)
    app = app_of(_on(tmp_path), tmp_path, pm)
    assert _start(pm, app) is not None
    pm.hook.on_shutdown(app=app)
    assert dict(vars(plugin)) == before, "starting changed the module's namespace"


def test_on_starts_one_runtime_even_when_called_twice(
    pm: pluggy.PluginManager, tmp_path: Path
) -> None:
    pm.register(plugin)
    app = app_of(_on(tmp_path), tmp_path, pm)
    runtime = _start(pm, app)
    assert runtime is not None
    plugin.on_startup(app=app)
    assert pm.get_plugin(plugin.RUNTIME_NAME) is runtime
    pm.hook.on_shutdown(app=app)


def test_off_registers_nothing_but_still_owns_the_collector_hook(
    pm: pluggy.PluginManager, tmp_path: Path
) -> None:
    pm.register(plugin)
    config = {"modules": {"phonehome": {"enabled": False}}}
    assert _start(pm, app_of(config, tmp_path, pm)) is None
    assert pm.hook.phonehome_register_collectors.spec is not None


def test_a_late_third_party_plugin_still_registers_its_collectors(
    pm: pluggy.PluginManager, tmp_path: Path
) -> None:
    pm.register(plugin)
    app = app_of(_on(tmp_path), tmp_path, pm)
    runtime = _start(pm, app)
    assert runtime is not None

    class Late:
        name = "acme.late"

        def collect(self) -> dict[str, int]:
            return {"n": 1}

    class LatePlugin:
        @hookimpl(optionalhook=True)
        def phonehome_register_collectors(self, register: Any) -> None:
            register(Late())

    pm.register(LatePlugin())
    assert "acme.late" in runtime.registry.collectors
    pm.hook.on_shutdown(app=app)


def test_a_bad_registration_is_the_third_party_s_error_not_the_host_s(
    pm: pluggy.PluginManager, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Nameless:
        @hookimpl(optionalhook=True)
        def phonehome_register_collectors(self, register: Any) -> None:
            register(object())

    pm.register(Nameless())
    pm.register(plugin)
    app = app_of(_on(tmp_path), tmp_path, pm)
    runtime = _start(pm, app)
    assert runtime is not None and runtime.registry.collectors == {}
    assert any("failed to register" in r.getMessage() for r in caplog.records)
    # Registered late, it is called inside the host's pm.register(): logged, not raised.
    caplog.clear()
    pm.register(Nameless(), name="late-nameless")
    assert [r.getMessage().split(":")[1] for r in caplog.records] == [" module test_plugin"]
    pm.hook.on_shutdown(app=app)


@pytest.mark.parametrize(
    "breakage",
    [
        {"config": None},
        {"config": {"modules": "phonehome"}},
        {"plugin_manager": None},
    ],
)
def test_on_startup_never_raises(
    pm: pluggy.PluginManager,
    tmp_path: Path,
    breakage: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = app_of(_on(tmp_path), tmp_path, pm)
    for key, value in breakage.items():
        setattr(app, key, value)
    plugin.on_startup(app=app)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR], "the failure was not logged"


def test_every_hook_implementation_takes_the_app_protocol() -> None:
    hooks = [plugin.on_startup, Runtime.on_user_created, Runtime.on_tick, Runtime.on_shutdown]
    for hook in hooks:
        assert get_type_hints(hook)["app"] is hookspecs.host.App, hook.__qualname__
    assert get_type_hints(Runtime.__init__)["app"] is hookspecs.host.App


# What a host start with telemetry off pays: checked in a fresh interpreter, which
# loads the plugin from its entry point as the host does and reports what it imported.
_FRESH_HOST = """
import json, sys
import pluggy, hookspecs.host
from types import SimpleNamespace
before = set(sys.modules)
pm = pluggy.PluginManager("maestrohub")
pm.add_hookspecs(hookspecs.host)
pm.load_setuptools_entrypoints("maestrohub")
app = SimpleNamespace(config=json.loads(sys.argv[1]), plugin_manager=pm)
pm.hook.on_startup.call_historic(kwargs={"app": app})
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def _fresh_start(config: Any) -> tuple[list[str], str]:
    """The modules a fresh host's start imported with ``config``, and its stderr (the
    child inherits the environment conftest cleared of switches and CI variables)."""
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_HOST, json.dumps(config)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    imported: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return imported, done.stderr


def test_a_host_start_with_telemetry_off_imports_only_the_entry_point_and_the_switch() -> None:
    imported, stderr = _fresh_start({"modules": {"phonehome": {"enabled": False}}})
    own = [name for name in imported if name.startswith("phonehome_plugin")]
    assert own == [
        "phonehome_plugin",
        "phonehome_plugin.config",
        "phonehome_plugin.config.switch",
        "phonehome_plugin.plugin",
    ]
    # No settings (dataclasses, regular expressions), and no logging for an INFO line
    # that a host which never imported logging would drop anyway.
    assert not {"dataclasses", "logging", "re"} & set(imported), imported
    assert stderr == ""


def test_an_invalid_section_is_logged_even_by_a_host_without_logging() -> None:
    imported, stderr = _fresh_start({"modules": {"phonehome": {"interval": 1}}})
    assert "logging" in imported
    [line] = stderr.splitlines()
    assert line.startswith("phonehome: off: invalid config.yaml, modules.phonehome.interval")


def test_the_off_line_is_logged_where_the_host_logs_info(
    pm: pluggy.PluginManager, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pm.register(plugin)
    config = {"modules": {"phonehome": {"enabled": False}}}
    with caplog.at_level(logging.INFO, logger="phonehome_plugin"):
        assert _start(pm, app_of(config, tmp_path, pm)) is None
    [record] = [r for r in caplog.records if r.name == "phonehome_plugin"]
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "phonehome: telemetry off: modules.phonehome.enabled is false in config.yaml"
    )
