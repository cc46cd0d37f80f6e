"""Plausible module activity for the simulated host: reproducible, in MaestroHub's
vocabulary, and with exactly the counts it claims."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from e2e_support import START
from simhost_support import OFF

from hookspecs import hookimpl
from phonehome_plugin.testing.activity import Activity
from phonehome_plugin.testing.simclock import SimClock
from phonehome_plugin.testing.simhost import SimHost
from phonehome_plugin.testing.vocabulary import (
    CONNECTION_TYPES,
    STATUSES,
    TRIGGER_NODES,
    WORK_NODES,
    status_plan,
)


class Ticks:
    def __init__(self) -> None:
        self.nows: list[datetime] = []

    @hookimpl
    def on_tick(self, app: Any, now: datetime) -> None:
        self.nows.append(now)


@pytest.fixture
def ticks() -> Ticks:
    return Ticks()


@pytest.fixture
def host(tmp_path: Path, ticks: Ticks) -> Iterator[SimHost]:
    sim = SimHost(
        OFF, tmp_path, clock=SimClock(START), load_entrypoints=False, extra_plugins=[ticks]
    )
    yield sim
    sim.shutdown()


def _snapshot(host: SimHost) -> dict[str, Any]:
    modules = host.state.modules
    return {
        "connections": [(c["id"], c["type"]) for c in modules["connections"].values()],
        "pipelines": [
            (p["id"], p["enabled"], p["node_types"]) for p in modules["pipelines"].values()
        ],
        "uns": dict(host.state.uns),
        "license": dict(host.state.license),
    }


def test_the_same_seed_makes_the_same_factory(tmp_path: Path) -> None:
    made = []
    for seed in (7, 7, 8):
        host = SimHost(OFF, tmp_path, clock=SimClock(START), load_entrypoints=False)
        Activity(seed=seed).populate_factory(host)
        made.append(_snapshot(host))
    assert made[0] == made[1]
    assert made[0] != made[2]


def test_a_factory_has_the_documented_inventory(host: SimHost) -> None:
    Activity(seed=3).populate_factory(host)
    modules = host.state.modules
    counts = {module: len(records) for module, records in modules.items()}
    assert counts == {
        "users": 0,
        "connections": 10,
        "pipelines": 30,
        "organizations": 2,
        "data_models": 4,
    }
    assert host.state.uns["topic_count"] == 2000
    assert host.state.license == {"license_id": "LIC-FACTORY-0042", "status": "active"}
    assert {c["type"] for c in modules["connections"].values()} <= set(CONNECTION_TYPES)


def test_a_large_enterprise_has_the_documented_inventory(host: SimHost) -> None:
    Activity(seed=1).populate_enterprise(host)
    counts = {module: len(records) for module, records in host.state.modules.items()}
    assert counts == {
        "users": 0,
        "connections": 5000,
        "pipelines": 10_000,
        "organizations": 36,
        "data_models": 480,
    }
    assert host.state.uns == {
        "topic_count": 100_000,
        "client_count": 2400,
        "mqtt_mode": "external",
        "storage_mode": "timescale",
    }
    by_type = Counter(c["type"] for c in host.state.modules["connections"].values())
    assert set(by_type) == set(CONNECTION_TYPES), "every type shows up among 5,000"


def test_every_pipeline_is_a_trigger_then_one_to_six_working_nodes() -> None:
    activity = Activity(seed=11)
    for _ in range(500):
        trigger, *work = activity.nodes()
        assert trigger in TRIGGER_NODES
        assert 1 <= len(work) <= 6
        assert set(work) <= set(WORK_NODES)


def test_an_hour_at_once_leaves_the_clock_alone(host: SimHost, ticks: Ticks) -> None:
    activity = Activity(seed=5)
    activity.populate_factory(host)
    host.start()
    sent = activity.hour_of_work(host)
    assert host.clock.now() == START
    assert ticks.nows == []
    assert 200 <= sum(sent.values()) <= 900
    assert set(sent) <= set(STATUSES)
    assert host.emitted_executions == sent
    assert sent["completed"] > sum(sent.values()) / 2, "mostly completed"


def test_an_hour_spread_over_ticks_ends_one_hour_later(host: SimHost, ticks: Ticks) -> None:
    activity = Activity(seed=5)
    activity.populate_factory(host)
    host.start()
    first = activity.hour_of_work(host, tick_every=600)
    second = activity.hour_of_work(host, tick_every=600)
    assert host.clock.now() == START + timedelta(hours=2)
    assert ticks.nows == [START + timedelta(seconds=600 * k) for k in range(1, 13)]
    assert host.emitted_executions == first + second


def test_status_plan_cycles_a_sequence_and_rejects_an_empty_one() -> None:
    assert status_plan(5, ("completed", "failed")) == [
        "completed",
        "failed",
        "completed",
        "failed",
        "completed",
    ]
    assert status_plan(2, "cancelled") == ["cancelled", "cancelled"]
    assert status_plan(0, ()) == []
    with pytest.raises(ValueError, match="statuses"):
        status_plan(3, ())


@pytest.mark.parametrize("n", range(0, 60, 7))
def test_status_plan_weights_always_add_up_to_n(n: int) -> None:
    weights = {"completed": 0.5, "failed": 0.3, "cancelled": 0.2}
    counts = Counter(status_plan(n, weights))
    assert sum(counts.values()) == n
    for status, weight in weights.items():
        assert abs(counts[status] - n * weight) < 1
