"""The report's shape: one JSON object per report, built from an allowlist.

Every field is put here by name from a sanitised source (inventory, tally,
store, system facts, collector sections that passed the privacy guard); nothing
is copied wholesale from what the host or a collector handed over. The shape is
published as a JSON Schema (``report.schema.json``) and versioned by
:data:`SCHEMA_VERSION`.

The same shape as types: :class:`Report` and a ``TypedDict`` per section, so
that mypy checks what :func:`build` puts where. ``tests/test_shape.py`` holds
them equal to the schema (every object the schema describes with
``properties``: the same keys, the same required keys, matching value types), so
the types and the published schema cannot drift apart (a key the operator can switch
off is ``NotRequired`` in both). The schema stays the
check every report passes before it is stored (:mod:`.schema`); the types say
nothing at run time. Typed loosely, as ``dict[str, Any]``, are only the parts the
schema itself leaves open: a collector's section (its keys are the collector's)
and the sources ``location`` is picked from.
"""

# No ``from __future__ import annotations`` here: TypedDict reads ``NotRequired`` only
# from evaluated annotations (Python 3.11), and the optional keys must be seen as such.
import json
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, NotRequired, TypeAlias, TypedDict

from phonehome_plugin.config.settings import Settings
from phonehome_plugin.counting.inventory import InstallationCounts, Inventory
from phonehome_plugin.guard import privacy

SCHEMA_VERSION: Final = 2
Trigger: TypeAlias = Literal["startup", "first_user", "periodic"]
TRIGGERS: tuple[Trigger, ...] = ("startup", "first_user", "periodic")
Edition: TypeAlias = Literal["core", "foundation", "enterprise"]
EDITIONS: tuple[Edition, ...] = ("core", "foundation", "enterprise")


# The report's types: one TypedDict per object of report.schema.json ---------------------


DETAILS = ("os_release", "python", "cpu_count", "memory_mb")
"""``system`` fields beyond the public page's examples (version, OS, CPU architecture,
hostname, public IP): what ``categories.system_details: false`` leaves out."""
SYSTEM_DETAILS = "system_details"
LOCATION = "location"
COLLECTORS = "collectors."
"""Names in ``diagnostics.switched_off``: these two, and ``collectors.<name>``."""


class SystemSection(TypedDict):
    """``system``: the host's facts (:func:`.system.host_facts`), the machine's
    (:func:`.system.machine_facts`) and the public IP from the location lookup; the
    :data:`DETAILS` may be switched off."""

    version: str | None
    edition: Edition | None
    prerelease: bool
    ci: bool
    os: str | None
    os_release: NotRequired[str | None]
    arch: str | None
    hostname: str | None
    python: NotRequired[str | None]
    cpu_count: NotRequired[int]
    memory_mb: NotRequired[int]
    plugin_version: str | None
    public_ip: str | None


class LicenseSection(TypedDict):
    id: str | None
    status: Literal["trial", "active", "expired", "other"] | None


class UsersSection(TypedDict):
    total: int
    first_email: str | None


class LocationSection(TypedDict):
    country: str | None
    city: str | None
    region: str | None
    isp: str | None


class ConnectionsSection(TypedDict):
    total: int
    by_type: dict[str, int]


class PipelinesSection(TypedDict):
    total: int
    enabled: int
    nodes_by_type: dict[str, int]


class UnsSection(TypedDict):
    topic_count: int | None
    client_count: int | None
    mqtt_mode: Literal["embedded", "external", "other"] | None
    storage_mode: str | None


class ByStatus(TypedDict):
    """Executions by terminal status: the contract's four, and ``unknown``."""

    completed: int
    failed: int
    completed_with_errors: int
    cancelled: int
    unknown: int


class Summary(TypedDict):
    """Totals of a set of executions: ``since_previous_report``, and the head of
    :class:`ExecutionsSection`."""

    total: int
    success: int
    failure: int
    success_rate: float | None


class ExecutionsSection(TypedDict):
    total: int
    success: int
    failure: int
    success_rate: float | None
    by_status: ByStatus
    since_previous_report: Summary
    uptime_seconds: int


class OtherSection(TypedDict):
    organizations: int
    data_models: int


class Delivery(TypedDict):
    """``diagnostics.delivery``: counts since the previous report."""

    dropped: int
    failed: int
    retried: int
    evicted: int
    rejected: int


class Diagnostics(TypedDict):
    collector_errors: dict[str, str]
    delivery: Delivery
    privacy_dropped: dict[str, int]
    suppressed_startups: int
    invalid_reports: int
    switched_off: list[str]


CollectorSections: TypeAlias = dict[str, dict[str, Any]]
"""``collectors``: each collector's section as :func:`.privacy.section` cleaned it."""


class Report(TypedDict):
    """One report, as :func:`build` makes it and ``report.schema.json`` publishes it."""

    schema_version: Literal[2]
    report_id: str
    instance_id: str
    sequence: int
    trigger: Trigger
    generated_at: str
    system: SystemSection
    license: LicenseSection
    users: UsersSection
    location: NotRequired[LocationSection]
    connections: ConnectionsSection
    pipelines: PipelinesSection
    uns: UnsSection
    executions: ExecutionsSection
    other: OtherSection
    collectors: CollectorSections
    diagnostics: Diagnostics


def no_diagnostics() -> Diagnostics:
    """Diagnostics of a telemetry that has nothing to tell: no error, every count zero."""
    return {
        "collector_errors": {},
        "delivery": {"dropped": 0, "failed": 0, "retried": 0, "evicted": 0, "rejected": 0},
        "privacy_dropped": {},
        "suppressed_startups": 0,
        "invalid_reports": 0,
        "switched_off": [],
    }


# Building -------------------------------------------------------------------------------


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
    trigger: Trigger
    now: datetime
    started_at: datetime
    system: SystemSection
    location: Mapping[str, Any]
    inventory: Inventory | InstallationCounts
    """This process's inventory, or the installation's counts (what reports use)."""
    first_email: str | None
    executions: Mapping[str, int]
    executions_before: Mapping[str, int]
    collectors: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    diagnostics: Diagnostics = field(default_factory=no_diagnostics)
    report_id: str = ""
    """The claim's report id; a new one when empty."""


def build(inputs: Inputs) -> Report:
    """The report as a JSON-ready dict (see the JSON Schema for each field)."""
    inv = inputs.inventory
    located = inputs.location
    return {
        "schema_version": SCHEMA_VERSION,
        "report_id": inputs.report_id or report_id(inputs.now),
        "instance_id": inputs.instance_id,
        "sequence": inputs.sequence,
        "trigger": inputs.trigger,
        "generated_at": iso(inputs.now),
        "system": {**inputs.system},
        "license": {"id": inv.license.get("id"), "status": inv.license.get("status")},
        "users": {"total": len(inv.users), "first_email": inputs.first_email},
        "location": {
            "country": located.get("country"),
            "city": located.get("city"),
            "region": located.get("region"),
            "isp": located.get("isp"),
        },
        "connections": _capped_counts(inv.connections.snapshot(), "by_type"),
        "pipelines": _capped_counts(inv.pipelines.snapshot(), "nodes_by_type"),
        "uns": {
            "topic_count": inv.uns.get("topic_count"),
            "client_count": inv.uns.get("client_count"),
            "mqtt_mode": inv.uns.get("mqtt_mode"),
            "storage_mode": inv.uns.get("storage_mode"),
        },
        "executions": executions(inputs),
        "other": {"organizations": len(inv.organizations), "data_models": len(inv.data_models)},
        "collectors": dict(inputs.collectors),
        "diagnostics": {**inputs.diagnostics},
    }


VOCABULARY_MAX = 200
"""Entries an open vocabulary (connection types, node types) has in a report at most:
the most frequent, the rest summed under ``other``, so that no installation's size or
naming makes a report large (docs/telemetry.md)."""
OTHER = "other"


def capped(counts: Mapping[str, int], most: int = VOCABULARY_MAX) -> dict[str, int]:
    """``counts`` with at most ``most`` entries: the largest (ties by name), and every
    other one summed into ``other`` (which counts as one of them)."""
    if len(counts) <= most:
        return dict(counts)
    named = [(name, n) for name, n in counts.items() if name != OTHER]
    ranked = sorted(named, key=lambda item: (-item[1], item[0]))
    kept = dict(ranked[: most - 1])
    kept[OTHER] = counts.get(OTHER, 0) + sum(n for _, n in ranked[most - 1 :])
    return dict(sorted(kept.items()))


COLLECTOR_KEYS_MAX = 2000
"""Keys all third-party sections of a report hold together, at most (each section's
own levels are bounded by the privacy guard): with many collectors, each keeps an
equal share, its keys in name order, and the keys left out are counted as dropped."""


def trimmed_sections(
    sections: Mapping[str, dict[str, Any]], most: int = COLLECTOR_KEYS_MAX
) -> tuple[dict[str, dict[str, Any]], int]:
    """``sections`` holding at most ``most`` keys in all, and how many were left out."""
    total = sum(len(section) for section in sections.values())
    if total <= most or not sections:
        return dict(sections), 0
    share = max(1, most // len(sections))
    kept = {name: dict(sorted(section.items())[:share]) for name, section in sections.items()}
    return kept, total - sum(len(section) for section in kept.values())


def _capped_counts(snapshot: Any, key: str) -> Any:
    snapshot[key] = capped(snapshot[key])
    return snapshot


def executions(inputs: Inputs) -> ExecutionsSection:
    """Lifetime totals and the change since the previous report.

    ``success`` counts ``completed``; ``failure`` counts ``failed`` and
    ``completed_with_errors`` (the run did not do all it was built to do);
    ``cancelled`` is neither, being an operator's choice rather than an
    outcome, and is left out of ``success_rate`` = success / (success + failure).
    """
    totals = by_status(lambda status: inputs.executions.get(status, 0))
    since = by_status(
        lambda status: max(
            0, inputs.executions.get(status, 0) - inputs.executions_before.get(status, 0)
        )
    )
    return {
        **summary(totals),
        "by_status": totals,
        "since_previous_report": summary(since),
        "uptime_seconds": max(0, int((inputs.now - inputs.started_at).total_seconds())),
    }


def by_status(count: Callable[[str], int]) -> ByStatus:
    """``count(status)`` for each of :data:`.tally.STATUSES` and ``unknown``, in that order."""
    return {
        "completed": count("completed"),
        "failed": count("failed"),
        "completed_with_errors": count("completed_with_errors"),
        "cancelled": count("cancelled"),
        "unknown": count("unknown"),
    }


def status_counts(counts: ByStatus) -> dict[str, int]:
    """``counts`` as a plain ``dict`` of status to count, in the same order."""
    return {
        "completed": counts["completed"],
        "failed": counts["failed"],
        "completed_with_errors": counts["completed_with_errors"],
        "cancelled": counts["cancelled"],
        "unknown": counts["unknown"],
    }


def summary(counts: ByStatus) -> Summary:
    success = counts["completed"]
    failure = counts["failed"] + counts["completed_with_errors"]
    decided = success + failure
    return {
        "total": sum(status_counts(counts).values()),
        "success": success,
        "failure": failure,
        "success_rate": round(success / decided, 6) if decided else None,
    }


def apply_privacy(report: Report, choices: Mapping[str, str], salt: bytes) -> None:
    """Apply the ``privacy`` options (send, hash or omit) to the three identifying fields,
    and ``location: country`` to the location (city, region and ISP nulled, whatever
    the lookup's cache held; ``omit`` is :func:`switch_off`'s).

    A field that is missing or None is left as it is, whatever the option.
    """
    users, system = report["users"], report["system"]
    email = users.get("first_email")
    if email is not None and choices.get("email", "send") != "send":
        users["first_email"] = _private(email, choices["email"], salt)
    hostname = system.get("hostname")
    if hostname is not None and choices.get("hostname", "send") != "send":
        system["hostname"] = _private(hostname, choices["hostname"], salt)
    public_ip = system.get("public_ip")
    if public_ip is not None and choices.get("public_ip", "send") != "send":
        system["public_ip"] = _private(public_ip, choices["public_ip"], salt)
    located = report.get("location")
    if located is not None and choices.get("location", "send") == "country":
        located["city"] = located["region"] = located["isp"] = None


def switch_off(report: Report, settings: Settings, collectors: Iterable[str] = ()) -> list[str]:
    """Take out of ``report`` what the operator switched off, and name it (names only) in
    ``diagnostics.switched_off``; returns those names.

    - ``location``, with ``privacy.location: omit``;
    - ``system_details`` (the :data:`DETAILS`), with ``categories.system_details: false``;
    - ``collectors.<name>`` for each collector ``categories.collectors`` denies, among
      ``collectors`` (the registered ones) and those the report has a section or an
      error of: its section and its error are both left out.
    """
    off: list[str] = []
    if settings.privacy.get("location", "send") == "omit":
        report.pop("location", None)
        off.append(LOCATION)
    if not settings.categories.system_details:
        found = report["system"]
        found.pop("os_release", None)
        found.pop("python", None)
        found.pop("cpu_count", None)
        found.pop("memory_mb", None)
        off.append(SYSTEM_DETAILS)
    sections, errors = report["collectors"], report["diagnostics"]["collector_errors"]
    for name in sorted({*collectors, *sections, *errors}):
        if not settings.categories.collector_on(name):
            sections.pop(name, None)
            errors.pop(name, None)
            off.append(COLLECTORS + name)
    report["diagnostics"]["switched_off"] = off
    return off


def _private(value: str, choice: str, salt: bytes) -> str | None:
    """What ``hash`` or ``omit`` makes of an identifying value."""
    return None if choice == "omit" else privacy.pseudonym(value, salt)


def encode(report: Report | Mapping[str, Any]) -> bytes:
    """The exact bytes POSTed (before any gzip): compact, key order as built."""
    return json.dumps(report, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
