"""Turning triggers into stored reports: claim, build, check, store, settle.

Each trigger is claimed in the state store first, so that however many
processes of one installation see it, one builds the report: the startup
report once per host start (``app.started_at``), the first-user report once in
the life of the installation, a periodic report once per interval slot.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from phonehome_plugin.config.settings import Settings
from phonehome_plugin.counting.collectors import Registry
from phonehome_plugin.counting.inventory import Inventory
from phonehome_plugin.counting.tally import ExecutionTally
from phonehome_plugin.guard import privacy
from phonehome_plugin.reports import location, schedule, schema, shape
from phonehome_plugin.reports.shape import Diagnostics, Report, Trigger
from phonehome_plugin.reports.system import HostFacts, MachineFacts
from phonehome_plugin.state.outbox import Entry, Outbox
from phonehome_plugin.state.store import Store

log = logging.getLogger(__name__)

LEASE = 120.0
"""Seconds (host clock) after which another process may take over an unfinished claim."""
EXEC = "exec."
EXEC_REPORTED = "exec_reported."
LAST_SLOT = "periodic.last_slot"
STARTUPS = "startup.recent"
FIRST_USER = "first_user"


@dataclass
class Reporter:
    """Builds reports on the worker thread; every method takes the host's ``now``."""

    settings: Settings
    store: Store
    outbox: Outbox
    inventory: Inventory
    tally: ExecutionTally
    registry: Registry
    host: HostFacts
    started_at: datetime
    machine: Callable[[], MachineFacts]
    drops: privacy.DropCounter = field(default_factory=privacy.DropCounter)
    owner: str = field(default_factory=lambda: f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
    instance_id: str = ""

    def __post_init__(self) -> None:
        self.instance_id = self.store.instance_id()
        self._machine: MachineFacts | None = None

    # Triggers ------------------------------------------------------------------

    def startup(self, now: datetime) -> Report | None:
        """The startup report of this host start, unless another process made it."""
        key = self._startup_key()
        if not self._claim(key, now):
            return None
        recent = [
            t for t in json.loads(self.store.get(STARTUPS) or "[]") if now.timestamp() - t < 3600
        ]
        if not schedule.startup_allowed(recent, now.timestamp()):
            self.store.add({"startup.suppressed": 1})
            self.store.finish_claim(key)
            log.warning(
                "phonehome: host restarted often; this startup report is counted, not sent"
            )
            return None
        self.store.set(STARTUPS, json.dumps([*recent, now.timestamp()]))
        self.store.setdefault(LAST_SLOT, lambda: str(self._current_slot(now)))
        return self._build_and_store(key, "startup", now)

    def _startup_key(self) -> str:
        return f"startup:{shape.iso(self.started_at)}"

    def startup_settled(self) -> bool:
        """True once some process finished this start's startup claim (built or counted).

        Until then a process that claimed it may have died mid-way, and another
        process takes over when its lease runs out.
        """
        return self.store.is_done(self._startup_key())

    def first_user_settled(self, user: tuple[datetime, str]) -> bool:
        """True once ``user`` needs no first-user report: one was made, or it is not first."""
        earliest = self._earliest_user()
        return self.store.is_done(FIRST_USER) or (earliest is not None and earliest < user)

    def first_user(self, user: tuple[datetime, str], now: datetime) -> Report | None:
        """The first-user report, if ``user`` (created_at, email) is the installation's first.

        Users are ordered by creation time, then email, so that two processes
        creating users at the same instant agree on which one was first.
        """
        self.remember_earliest_user()
        earliest = self._earliest_user()
        if earliest is not None and earliest < user:
            return None
        if not self._claim(FIRST_USER, now):
            return None
        return self._build_and_store(FIRST_USER, "first_user", now)

    def periodic(self, now: datetime) -> Report | None:
        """The periodic report of the current slot, when it is due."""
        last = int(self.store.setdefault(LAST_SLOT, lambda: str(self._current_slot(now))))
        slot = schedule.periodic_slot(
            now.timestamp(), last, self.instance_id, self.settings.interval
        )
        if slot is None:
            return None
        key = f"periodic:{slot}"
        if not self._claim(key, now):
            return None
        built = self._build_and_store(key, "periodic", now)
        self.store.set(LAST_SLOT, str(slot))
        return built

    def next_periodic(self, now: datetime) -> float:
        """Host-clock epoch seconds when the next periodic report falls due."""
        last = int(self.store.get(LAST_SLOT) or self._current_slot(now))
        return schedule.periodic_due_at(last, self.instance_id, self.settings.interval)

    def _current_slot(self, now: datetime) -> int:
        interval = self.settings.interval
        offset = schedule.offset(self.instance_id, interval)
        return schedule.slot_of(now.timestamp(), interval, offset)

    def _claim(self, key: str, now: datetime) -> bool:
        return self.store.claim(key, self.owner, now.timestamp(), LEASE)

    # Building ------------------------------------------------------------------

    def fold(self) -> None:
        """Move this process's execution counts into the store's lifetime totals."""
        delta = self.tally.take_delta()
        self.store.add({EXEC + status: n for status, n in delta.items()})

    def remember_earliest_user(self) -> None:
        """Keep the earliest user ever known, for ``first_email`` after deletions."""
        found = self.inventory.users.earliest
        stored = self._earliest_user()
        if found is not None and (stored is None or found < stored):
            self.store.set("users.earliest", json.dumps([found[0].isoformat(), found[1]]))

    def _earliest_user(self) -> tuple[datetime, str] | None:
        raw = self.store.get("users.earliest")
        if raw is None:
            return None
        at, email = json.loads(raw)
        return datetime.fromisoformat(at).astimezone(UTC), str(email)

    def build(self, trigger: Trigger, now: datetime, sequence: int = 0) -> Report:
        """A complete report for ``trigger``; neither stored nor counted as sent."""
        self.fold()
        self.remember_earliest_user()
        located = self._location(now)
        sections, errors = self.registry.collect_all(self.drops)
        earliest = self._earliest_user()
        inputs = shape.Inputs(
            instance_id=self.instance_id,
            sequence=sequence,
            trigger=trigger,
            now=now,
            started_at=self.started_at,
            system={**self.host, **self._machine_facts(), "public_ip": located["public_ip"]},
            location=located,
            inventory=self.inventory,
            first_email=None if earliest is None else earliest[1],
            executions=self.store.counters(EXEC),
            executions_before=self.store.counters(EXEC_REPORTED),
            collectors=sections,
            diagnostics=self._diagnostics(errors),
        )
        built = shape.build(inputs)
        shape.apply_privacy(built, self.settings.privacy, self._salt())
        return built

    def _build_and_store(self, key: str, trigger: Trigger, now: datetime) -> Report | None:
        """Settle the claimed trigger ``key``: build its report with the next sequence
        number, check it against the schema, store it in the outbox with the counts it
        carries taken, and finish the claim. A report the schema refuses is counted
        instead (``schema.invalid``) and the claim finished all the same: None."""
        built = self.build(trigger, now, self.store.next_sequence())
        problems = schema.errors(built)
        if problems:
            # Fail closed: a report the schema does not vouch for is never sent.
            self.store.add({"schema.invalid": 1})
            self.store.finish_claim(key)
            log.error(
                "phonehome: %s report failed its schema, not sent: %s",
                trigger,
                "; ".join(problems[:5]),
            )
            return None
        entry = Entry(
            built["report_id"], built["sequence"], trigger, now.timestamp(), shape.encode(built)
        )
        self.outbox.put(entry, now.timestamp())
        self._commit_counts(built)
        self._consume(built["diagnostics"])
        self.store.finish_claim(key)
        return built

    def _commit_counts(self, built: Report) -> None:
        """What was reported is no longer news: reset the counts that rode along."""
        self.store.take(EXEC_REPORTED)
        reported = shape.status_counts(built["executions"]["by_status"])
        self.store.add({EXEC_REPORTED + s: n for s, n in reported.items()})

    def _diagnostics(self, errors: dict[str, str]) -> Diagnostics:
        self.store.add({f"privacy.{reason}": n for reason, n in self.drops.take().items()})
        delivery = self.store.counters("delivery.")
        return {
            "collector_errors": errors,
            "delivery": {
                "dropped": delivery.get("dropped", 0),
                "failed": delivery.get("failed", 0),
                "retried": delivery.get("retried", 0),
                "evicted": delivery.get("evicted", 0),
                "rejected": delivery.get("rejected", 0),
            },
            "privacy_dropped": {k: n for k, n in self.store.counters("privacy.").items() if n},
            "suppressed_startups": self.store.counters("startup.").get("suppressed", 0),
            "invalid_reports": self.store.counters("schema.").get("invalid", 0),
        }

    def _consume(self, diagnostics: Diagnostics) -> None:
        """The stored report carries these counts now: subtract exactly what it carries,
        so that anything counted meanwhile (by this or another process) rides next time."""
        delivery = diagnostics["delivery"]
        taken = {
            "delivery.dropped": -delivery["dropped"],
            "delivery.failed": -delivery["failed"],
            "delivery.retried": -delivery["retried"],
            "delivery.evicted": -delivery["evicted"],
            "delivery.rejected": -delivery["rejected"],
        }
        taken.update({f"privacy.{k}": -n for k, n in diagnostics["privacy_dropped"].items()})
        taken["startup.suppressed"] = -diagnostics["suppressed_startups"]
        taken["schema.invalid"] = -diagnostics["invalid_reports"]
        self.store.add(taken)

    def _location(self, now: datetime) -> dict[str, Any]:
        if self.settings.mode != "send":
            return dict(location.EMPTY)
        return location.lookup(self.settings.geoip_url, self.store, now.timestamp())

    def _machine_facts(self) -> MachineFacts:
        if self._machine is None:
            self._machine = self.machine()
        return self._machine

    def _salt(self) -> bytes:
        return bytes.fromhex(self.store.setdefault("privacy.salt", lambda: os.urandom(32).hex()))
