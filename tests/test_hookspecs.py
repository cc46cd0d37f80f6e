"""Tests for the ``hookspecs`` contract package against the fixed host contract."""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import blinker
import pluggy
import pytest
from dist_support import CONTRACT, MODULE, page_files

import hookspecs
from hookspecs import host, phonehome, signals

HOST_HOOKS = {
    "on_startup": ("app",),
    "on_user_created": ("app", "user"),
    "on_tick": ("app", "now"),
    "on_shutdown": ("app",),
}
PLUGIN_HOOKS = {"phonehome_register_collectors": ("register",)}
HISTORIC = {"on_startup", "phonehome_register_collectors"}

CONTRACT_SIGNALS = [
    "inventory-synced",
    "user-deleted",
    "connection-saved",
    "connection-deleted",
    "pipeline-saved",
    "pipeline-deleted",
    "execution-finished",
    "organization-saved",
    "organization-deleted",
    "data-model-saved",
    "data-model-deleted",
    "uns-state-changed",
    "license-changed",
]

APP_ATTRIBUTES = (
    "version",
    "edition",
    "config",
    "config_path",
    "data_dir",
    "started_at",
    "plugin_manager",
)


@pytest.fixture
def pm() -> pluggy.PluginManager:
    """A plugin manager set up as the host sets one up, plus the plugin-owned hook."""
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(host)
    manager.add_hookspecs(phonehome)
    return manager


def _hookspec_functions(module: ModuleType) -> dict[str, Callable[..., Any]]:
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return {
        name: value
        for name, value in vars(module).items()
        if inspect.isfunction(value) and hasattr(value, marker)
    }


# Markers and discovery ------------------------------------------------------------------


def test_project_name_is_maestrohub() -> None:
    assert hookspecs.PROJECT_NAME == "maestrohub"
    assert hookspecs.hookspec.project_name == "maestrohub"
    assert hookspecs.hookimpl.project_name == "maestrohub"
    assert isinstance(hookspecs.hookspec, pluggy.HookspecMarker)
    assert isinstance(hookspecs.hookimpl, pluggy.HookimplMarker)


def test_markers_work_with_a_maestrohub_plugin_manager(pm: pluggy.PluginManager) -> None:
    calls: list[Any] = []

    class Plugin:
        @hookspecs.hookimpl
        def on_tick(self, app: Any, now: datetime) -> None:
            calls.append((app, now))

    pm.register(Plugin())
    now = datetime(2024, 1, 1, tzinfo=UTC)
    pm.hook.on_tick(app="app", now=now)
    assert calls == [("app", now)]


def test_the_phonehome_plugin_is_an_entry_point_of_the_maestrohub_group() -> None:
    points = importlib.metadata.entry_points(group="maestrohub")
    assert {(p.name, p.value) for p in points} >= {("phonehome", "phonehome_plugin.plugin")}


# Hooks ----------------------------------------------------------------------------------


def test_host_module_holds_exactly_the_contract_hooks() -> None:
    assert set(_hookspec_functions(host)) == set(HOST_HOOKS)
    assert set(_hookspec_functions(phonehome)) == set(PLUGIN_HOOKS)


@pytest.mark.parametrize(("name", "args"), [*HOST_HOOKS.items(), *PLUGIN_HOOKS.items()])
def test_each_hook_has_exactly_the_contract_arguments(
    pm: pluggy.PluginManager, name: str, args: tuple[str, ...]
) -> None:
    caller = getattr(pm.hook, name)
    assert caller.spec is not None
    assert tuple(caller.spec.argnames) == args


@pytest.mark.parametrize("name", [*HOST_HOOKS, *PLUGIN_HOOKS])
def test_only_the_contract_hooks_are_historic(pm: pluggy.PluginManager, name: str) -> None:
    caller = getattr(pm.hook, name)
    assert caller.spec.opts["historic"] is (name in HISTORIC)
    assert caller.spec.opts["firstresult"] is False


def test_historic_hooks_reach_plugins_registered_later(pm: pluggy.PluginManager) -> None:
    seen: list[str] = []
    pm.hook.on_startup.call_historic(kwargs={"app": "the-app"})

    class Late:
        @hookspecs.hookimpl
        def on_startup(self, app: Any) -> None:
            seen.append(app)

    pm.register(Late())
    assert seen == ["the-app"]


@pytest.mark.parametrize(
    ("module", "name"),
    [(host, name) for name in HOST_HOOKS] + [(phonehome, name) for name in PLUGIN_HOOKS],
)
def test_every_hookspec_documents_each_argument(module: ModuleType, name: str) -> None:
    function = getattr(module, name)
    doc = inspect.getdoc(function)
    assert doc
    for argument in inspect.signature(function).parameters:
        assert f":param {argument}:" in doc, f"{name} does not document {argument}"


# Signals --------------------------------------------------------------------------------


def _attribute(name: str) -> str:
    return name.replace("-", "_")


@pytest.mark.parametrize("name", CONTRACT_SIGNALS)
def test_each_contract_signal_exists_under_its_snake_case_name(name: str) -> None:
    signal = getattr(signals, _attribute(name))
    assert isinstance(signal, blinker.NamedSignal)
    assert signal.name == name


def test_all_signals_live_in_one_namespace_of_their_own() -> None:
    spaces = [value for value in vars(signals).values() if isinstance(value, blinker.Namespace)]
    assert len(spaces) == 1
    (space,) = spaces
    assert sorted(space) == sorted(CONTRACT_SIGNALS)
    # Not blinker's default namespace (the one blinker.signal() fills), which any library
    # could share. blinker.default_namespace is only named so from 1.8 on.
    # blinker types signal() as a protocol; at run time it is the namespace's bound method.
    assert space is not blinker.signal.__self__  # type: ignore[attr-defined]
    for name in CONTRACT_SIGNALS:
        assert space[name] is getattr(signals, _attribute(name))


def test_all_lists_every_signal_in_contract_order() -> None:
    assert [signal.name for signal in signals.ALL] == CONTRACT_SIGNALS


# The app protocol -----------------------------------------------------------------------


def _full_app() -> SimpleNamespace:
    return SimpleNamespace(
        version="2.3.0",
        edition="core",
        config={},
        config_path=None,
        data_dir=Path("/tmp"),
        started_at=datetime(2024, 1, 1, tzinfo=UTC),
        plugin_manager=pluggy.PluginManager("maestrohub"),
    )


def test_app_is_exported_and_runtime_checkable() -> None:
    assert hookspecs.App is host.App
    assert isinstance(_full_app(), hookspecs.App)


@pytest.mark.parametrize("missing", APP_ATTRIBUTES)
def test_app_protocol_requires_each_of_the_seven_attributes(missing: str) -> None:
    app = _full_app()
    delattr(app, missing)
    assert not isinstance(app, hookspecs.App)


def test_app_protocol_has_exactly_the_seven_attributes() -> None:
    members = {name for name, value in vars(host.App).items() if isinstance(value, property)}
    assert members == set(APP_ATTRIBUTES)
    hints = {
        name: inspect.signature(getattr(host.App, name).fget).return_annotation
        for name in APP_ATTRIBUTES
    }
    assert hints == {
        "version": "str",
        "edition": "str",
        "config": "Mapping[str, Any]",
        "config_path": "Path | None",
        "data_dir": "Path",
        "started_at": "datetime",
        "plugin_manager": "pluggy.PluginManager",
    }


# The types of the hook arguments ---------------------------------------------------------


@pytest.mark.parametrize("name", HOST_HOOKS)
def test_every_host_hook_takes_the_app_protocol(name: str) -> None:
    assert inspect.signature(getattr(host, name)).parameters["app"].annotation == "App"


def test_register_takes_the_collector_protocol() -> None:
    register = inspect.signature(phonehome.phonehome_register_collectors).parameters["register"]
    assert register.annotation == "Callable[[Collector], None]"
    assert hookspecs.Collector is phonehome.Collector
    assert hookspecs.CollectorWithReceivers is phonehome.CollectorWithReceivers
    assert phonehome.Collector in phonehome.CollectorWithReceivers.__mro__


def test_the_collector_protocols_have_exactly_the_contract_members() -> None:
    def members(protocol: type) -> set[str]:
        return {
            name
            for name, value in vars(protocol).items()
            if not name.startswith("_")
            and (isinstance(value, property) or inspect.isfunction(value))
        }

    assert members(phonehome.Collector) == {"name", "collect"}
    assert members(phonehome.CollectorWithReceivers) == {"receivers"}


def test_the_collector_of_the_module_authors_page_is_a_collector() -> None:
    """docs/modules.md's collector (tests/test_modules_doc.py runs it end to end)."""
    source = page_files()[MODULE]
    namespace: dict[str, Any] = {"__name__": "acme_historian.telemetry"}
    exec(compile(source, MODULE, "exec"), namespace)
    collector = namespace["HistorianCollector"]()
    assert isinstance(collector, hookspecs.CollectorWithReceivers)
    assert not isinstance(object(), hookspecs.Collector)
    [(signal, _)] = collector.receivers()
    assert signal is signals.execution_finished


# The distribution ------------------------------------------------------------------------


def test_the_installed_contract_is_this_one_with_its_own_version() -> None:
    assert importlib.metadata.version("maestrohub-hookspecs") == hookspecs.__version__
    written = (CONTRACT / "hookspecs" / "__init__.py").read_text("utf-8")
    assert f'__version__ = "{hookspecs.__version__}"' in written, "the contract of this tree"
    requires = importlib.metadata.requires("maestrohub-hookspecs") or []
    assert sorted(r.split(">")[0] for r in requires) == ["blinker", "pluggy"]
