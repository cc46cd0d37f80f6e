"""What the simulated installation's modules send, for :mod:`.simhost`.

- MaestroHub's vocabulary: connection types, node types, execution statuses.
- The sensitive extras every simulated signal, inventory item and user carries
  (:data:`SECRET_MARKER` marks each), as the real host passes whole objects along.
- Execution plans with exact counts, and the (optionally threaded) sending of
  ``execution-finished``.
- :class:`Activity`: plausible module activity that drives a
  :class:`~phonehome_plugin.simhost.SimHost`, reproducibly from a seed::

      host = SimHost(config, data_dir)
      activity = Activity(seed=1)
      activity.populate_factory(host)  # state set before start() is synced by it
      host.start()
      activity.hour_of_work(host, tick_every=600)

:mod:`.simmodules` makes the modules' saves, deletes and UNS/license changes from
this vocabulary; :mod:`.simhost` re-exports these names for existing imports.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from hookspecs import signals

if TYPE_CHECKING:
    from phonehome_plugin.simhost import SimHost

CONNECTION_TYPES = (
    "mqtt",
    "opcua",
    "modbus",
    "s7",
    "opcda",
    "postgresql",
    "mssql",
    "rest",
    "pubsub",
)
"""Connection types of the contract's examples (the real set is open)."""
TRIGGER_NODES = ("trigger.manual", "trigger.webhook", "trigger.uns.subscribe")
"""Node types that start a pipeline; every pipeline :meth:`Activity.nodes` makes has one."""
WORK_NODES = (
    "system.uns.publish",
    "system.uns.publishBatch",
    "system.uns.fetchdata",
    "system.uns.searchnodes",
    "action.http",
)
"""Node types that follow the trigger."""
STATUSES = ("completed", "failed", "completed_with_errors", "cancelled")
"""The terminal statuses of ``execution-finished``."""

SECRET_MARKER = "sim-secret-c0ffee"
"""In every sensitive value the simulator passes; never in a correct report or data file."""

# One shared copy for every send: receivers must neither keep nor change what they get.
EXTRAS: Mapping[str, Any] = {
    "workflow": {"nodes": [{"type": "action.http", "script": f"token = '{SECRET_MARKER}'"}]},
    "credentials": {"username": "svc-maestro", "password": f"{SECRET_MARKER}-password"},
    "actor": {"email": f"{SECRET_MARKER}.operator@example.com", "ip": "198.51.100.23"},
}
"""Extra keyword arguments of every signal the simulated host sends."""
ITEM_EXTRAS: Mapping[str, Mapping[str, Any]] = {
    "connections": {"config": {"host": "192.0.2.10", "password": f"{SECRET_MARKER}-plc"}},
    "pipelines": {"definition": {"script": f"secret = '{SECRET_MARKER}'"}},
    "organizations": {"name": f"ACME Plant {SECRET_MARKER}"},
    "data_models": {"schema": {"default_token": SECRET_MARKER}},
}
"""Extra fields of each saved record, by module (users carry theirs from ``create_user``)."""
ID_PREFIX = {
    "users": "usr",
    "connections": "conn",
    "pipelines": "pipe",
    "organizations": "org",
    "data_models": "dm",
}
"""Prefix of the ids the simulated modules make up, by module."""


def status_plan(n: int, statuses: Sequence[str] | Mapping[str, float]) -> list[str]:
    """The status of each of ``n`` executions, in sending order.

    A sequence is cycled through; a mapping holds weights, apportioned exactly by
    largest remainder, each status spread evenly over the run.
    """
    weights = statuses if isinstance(statuses, Mapping) else None
    if n and not (sum(weights.values()) > 0 if weights is not None else statuses):
        raise ValueError("statuses must name at least one status (with a positive weight)")
    if weights is None:
        order = (statuses,) if isinstance(statuses, str) else statuses
        return list(itertools.islice(itertools.cycle(order), n))
    shares = {status: n * weight / sum(weights.values()) for status, weight in weights.items()}
    counts = {status: math.floor(share) for status, share in shares.items()}
    for status in sorted(shares, key=lambda s: counts[s] - shares[s])[: n - sum(counts.values())]:
        counts[status] += 1
    # Spread each status evenly over the run rather than sending it in one block.
    slots = sorted(((k + 0.5) / c, status) for status, c in counts.items() for k in range(c))
    return [status for _, status in slots]


def send_executions(
    app: object, plan: Sequence[str], pipeline_ids: Sequence[str], threads: int = 1
) -> None:
    """Send one ``execution-finished`` per entry of ``plan``, pipelines taking turns.

    With ``threads`` > 1 the sends come from that many threads released at once, as
    from a host's worker pool; the first error of any of them is raised here.
    """
    if threads < 1:
        raise ValueError("threads must be at least 1")
    gate, errors = threading.Barrier(threads), list[BaseException]()

    def send(indices: range) -> None:
        for i in indices:
            signals.execution_finished.send(
                app,
                pipeline_id=pipeline_ids[i % len(pipeline_ids)],
                status=plan[i],
                duration_ms=15 + i * 7919 % 4000,
                **EXTRAS,
            )

    def worker(indices: range) -> None:
        try:
            gate.wait()  # release every worker at once, so they contend as a pool's do
            send(indices)
        except BaseException as error:  # re-raised on the caller's thread below
            errors.append(error)

    if threads == 1:
        send(range(len(plan)))
        return
    pool = [
        threading.Thread(target=worker, args=(range(k, len(plan), threads),))
        for k in range(threads)
    ]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if errors:
        raise errors[0]


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
