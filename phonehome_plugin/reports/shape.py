"""The report's shape: one JSON object per report, built from an allowlist.

Every field is put here by name from a sanitised source (inventory, tally,
store, system facts, collector sections that passed the privacy guard); nothing
is copied wholesale from what the host or a collector handed over. The shape is
published as a JSON Schema (``report.schema.json``) and versioned by
:data:`SCHEMA_VERSION`.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from phonehome_plugin.counting.inventory import Inventory
from phonehome_plugin.counting.tally import STATUSES
from phonehome_plugin.guard import privacy

SCHEMA_VERSION = 1
TRIGGERS = ("startup", "first_user", "periodic")


def report_id(now: datetime) -> str:
    """A UUIDv7: unique, and ordered by the host-clock millisecond it was made in."""
    millis = int(now.timestamp() * 1000) & (2**48 - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis << 80) | (0x7 << 76) | ((rand >> 62) & 0xFFF) << 64
    value |= (0b10 << 62) | (rand & (2**62 - 1))
    return str(uuid.UUID(int=value))


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, to the millisecond."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Inputs:
    """Everything a report is made of, gathered by the worker before building."""

    instance_id: str
    sequence: int
    trigger: str
    now: datetime
    started_at: datetime
    system: Mapping[str, Any]
    location: Mapping[str, Any]
    inventory: Inventory
    first_email: str | None
    executions: Mapping[str, int]
    executions_before: Mapping[str, int]
    collectors: Mapping[str, Any] = field(default_factory=dict)
    diagnostics: Mapping[str, Any] = field(default_factory=dict)
    report_id: str = ""
    """The claim's report id; a new one when empty."""


def build(inputs: Inputs) -> dict[str, Any]:
    """The report as a JSON-ready dict (see the JSON Schema for each field)."""
    inv = inputs.inventory
    return {
        "schema_version": SCHEMA_VERSION,
        "report_id": inputs.report_id or report_id(inputs.now),
        "instance_id": inputs.instance_id,
        "sequence": inputs.sequence,
        "trigger": inputs.trigger,
        "generated_at": iso(inputs.now),
        "system": dict(inputs.system),
        "license": {"id": inv.license.get("id"), "status": inv.license.get("status")},
        "users": {"total": len(inv.users), "first_email": inputs.first_email},
        "location": {k: inputs.location.get(k) for k in ("country", "city", "region", "isp")},
        "connections": inv.connections.snapshot(),
        "pipelines": inv.pipelines.snapshot(),
        "uns": {
            k: inv.uns.get(k) for k in ("topic_count", "client_count", "mqtt_mode", "storage_mode")
        },
        "executions": executions(inputs),
        "other": {"organizations": len(inv.organizations), "data_models": len(inv.data_models)},
        "collectors": dict(inputs.collectors),
        "diagnostics": dict(inputs.diagnostics),
    }


def executions(inputs: Inputs) -> dict[str, Any]:
    """Lifetime totals and the change since the previous report.

    ``success`` counts ``completed``; ``failure`` counts ``failed`` and
    ``completed_with_errors`` (the run did not do all it was built to do);
    ``cancelled`` is neither, being an operator's choice rather than an
    outcome, and is left out of ``success_rate`` = success / (success + failure).
    """
    totals = {status: inputs.executions.get(status, 0) for status in (*STATUSES, "unknown")}
    since = {s: max(0, totals[s] - inputs.executions_before.get(s, 0)) for s in totals}
    return {
        **summary(totals),
        "by_status": totals,
        "since_previous_report": summary(since),
        "uptime_seconds": max(0, int((inputs.now - inputs.started_at).total_seconds())),
    }


def summary(counts: Mapping[str, int]) -> dict[str, Any]:
    success = counts["completed"]
    failure = counts["failed"] + counts["completed_with_errors"]
    decided = success + failure
    return {
        "total": sum(counts.values()),
        "success": success,
        "failure": failure,
        "success_rate": round(success / decided, 6) if decided else None,
    }


def apply_privacy(report: dict[str, Any], choices: Mapping[str, str], salt: bytes) -> None:
    """Apply the ``privacy`` options (send, hash or omit) to the three identifying fields."""
    places = {
        "email": ("users", "first_email"),
        "hostname": ("system", "hostname"),
        "public_ip": ("system", "public_ip"),
    }
    for option, (section, key) in places.items():
        value = report[section].get(key)
        if value is None or choices.get(option, "send") == "send":
            continue
        report[section][key] = (
            None if choices[option] == "omit" else privacy.pseudonym(value, salt)
        )


def encode(report: Mapping[str, Any]) -> bytes:
    """The exact bytes POSTed (before any gzip): compact, key order as built."""
    return json.dumps(report, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
