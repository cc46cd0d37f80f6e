"""MaestroHub's vocabulary as the simulated host speaks it, for :mod:`.simhost`.

- Connection types, node types, execution statuses.
- The sensitive extras every simulated signal, inventory item and user carries
  (:data:`SECRET_MARKER` marks each), as the real host passes whole objects along.
- Execution plans with exact counts (:func:`status_plan`), and the (optionally
  threaded) sending of ``execution-finished`` (:func:`send_executions`).

Knows no host: :class:`~.simhost.SimHost` sends with it, :class:`~.activity.Activity`
chooses from it.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from hookspecs import signals

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
"""Node types that start a pipeline; every pipeline that
:meth:`.activity.Activity.nodes` makes has one."""
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
