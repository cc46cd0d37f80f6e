"""Plausible module activity that drives a :class:`~.simhost.SimHost`, reproducibly
from a seed::

    host = SimHost(config, data_dir)
    activity = Activity(seed=1)
    activity.populate_factory(host)  # state set before start() is synced by it
    host.start()
    activity.hour_of_work(host, tick_every=600)

It chooses what to do from MaestroHub's vocabulary (:mod:`.vocabulary`) and does
it through the host's own methods.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from phonehome_plugin.testing.vocabulary import (
    CONNECTION_TYPES,
    STATUSES,
    TRIGGER_NODES,
    WORK_NODES,
)

if TYPE_CHECKING:
    from phonehome_plugin.testing.simhost import SimHost


class Activity:
    """Plausible module activity in MaestroHub's vocabulary, reproducible from ``seed``."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def nodes(self) -> list[str]:
        """Node types of one pipeline: a trigger, then one to six working nodes."""
        work = self.rng.choices(WORK_NODES, weights=(6, 2, 3, 1, 3), k=self.rng.randint(1, 6))
        return [self.rng.choices(TRIGGER_NODES, weights=(2, 3, 5))[0], *work]

    def populate_factory(self, host: SimHost) -> None:
        """A typical factory: 10 connections, 30 pipelines, 2 organizations, 4 data
        models, 2,000 topics, an active license; no users (the first comes live)."""
        kinds = self.rng.choices(CONNECTION_TYPES[:8], weights=(3, 2, 2, 1, 0, 1, 0, 1), k=10)
        self._populate(host, kinds, pipelines=30, organizations=2, data_models=4)
        host.set_uns(topic_count=2000, client_count=self.rng.randint(6, 20))
        host.set_license("active", license_id="LIC-FACTORY-0042")

    def populate_enterprise(self, host: SimHost) -> None:
        """Large Enterprise: 5,000 connections, 10,000 pipelines, 36 organizations,
        480 data models, 100,000 topics on an external broker and TimescaleDB."""
        weights = (30, 25, 15, 10, 3, 8, 4, 4, 1)
        kinds = self.rng.choices(CONNECTION_TYPES, weights=weights, k=5000)
        self._populate(host, kinds, pipelines=10_000, organizations=36, data_models=480)
        host.set_uns(topic_count=100_000, client_count=2400, mqtt_mode="external")
        host.set_uns(storage_mode="timescale")
        host.set_license("active", license_id="LIC-ENT-7001")

    def hour_of_work(self, host: SimHost, *, tick_every: float | None = None) -> Counter[str]:
        """One plausible hour on a running host: a few edits, hundreds of executions
        (mostly completed). Returns the executions sent, by status.

        Without ``tick_every`` it all happens at once and the clock is untouched; with
        it the work is spread over the hour, ticking every ``tick_every`` seconds, so
        the clock ends one hour later.
        """
        rng, slices = self.rng, max(1, round(3600 / tick_every)) if tick_every else 1
        pipelines = list(host.state.modules["pipelines"])
        edits: list[Callable[[], object]] = []
        for pipeline_id in rng.sample(pipelines, min(len(pipelines), rng.randint(1, 3))):
            edits.append(partial(host.save_pipeline, self.nodes(), pipeline_id=pipeline_id))
        if rng.random() < 0.3:
            edits.append(partial(host.save_pipeline, self.nodes(), enabled=rng.random() < 0.5))
        if pipelines and rng.random() < 0.2:
            edits.append(partial(host.delete_pipeline, rng.choice(pipelines)))
        if rng.random() < 0.3:
            edits.append(partial(host.save_connection, rng.choice(CONNECTION_TYPES)))
        if rng.random() < 0.1:
            edits.append(host.save_data_model)
        topics = host.state.uns["topic_count"] + rng.randint(0, 40)
        edits.append(partial(host.set_uns, topic_count=topics))
        when = [rng.randrange(slices) for _ in edits]
        total = rng.randint(200, 900)
        plan = rng.choices(STATUSES, weights=(950, 20, 25, 5), k=total)
        sent: Counter[str] = Counter()
        for index in range(slices):
            for edit in (edit for edit, slot in zip(edits, when, strict=True) if slot == index):
                edit()
            chunk = plan[index * total // slices : (index + 1) * total // slices]
            sent += host.run_executions(len(chunk), statuses=chunk)
            if tick_every:
                host.tick(3600 / slices)
        return sent

    def _populate(
        self,
        host: SimHost,
        kinds: list[str],
        *,
        pipelines: int,
        organizations: int,
        data_models: int,
    ) -> None:
        for kind in kinds:
            host.save_connection(kind)
        for _ in range(pipelines):
            host.save_pipeline(self.nodes(), enabled=self.rng.random() < 0.8)
        for _ in range(organizations):
            host.save_organization()
        for _ in range(data_models):
            host.save_data_model()
