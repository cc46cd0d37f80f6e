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
from phonehome_plugin.counting.inventory import Changes, InstallationCounts, Inventory
from phonehome_plugin.counting.tally import ExecutionTally
from phonehome_plugin.guard import privacy
from phonehome_plugin.reports import location, schedule, schema, shape
from phonehome_plugin.reports.shape import Diagnostics, Report, Trigger
from phonehome_plugin.reports.system import HostFacts, MachineFacts
from phonehome_plugin.state import entities
from phonehome_plugin.state import owner as ownership
from phonehome_plugin.state.outbox import Entry, Outbox
from phonehome_plugin.state.store import (
    INSERT_KV_ONCE,
    UPSERT_KV,
    Conn,
    Store,
    add_counters,
    claim_in,
    done_in,
    get_in,
    next_sequence,
    take_counters,
)

log = logging.getLogger(__name__)

EXEC = "exec."
EXEC_REPORTED = "exec_reported."
LAST_SLOT = "periodic.last_slot"
STARTUPS = "startup.recent"
FIRST_USER = "first_user"
FOLDED = "fold."
"""kv key prefix: a reporter's last fold number (see :meth:`Reporter.fold`)."""
EARLIEST = "users.earliest"
"""The installation's earliest user ever known, ``[created_at, email]`` as JSON."""
SINCE = "installation.since"
"""The ``started_at`` of the first host start that opened the installation's state."""


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
    owner: str = field(default_factory=ownership.register)
    sightings: ownership.Sightings = field(default_factory=ownership.Sightings)
    instance_id: str = ""
    first_user_made: bool = False
    """Seen by each :meth:`periodic` until true: the first-user report was made (or refused)."""
    owed: tuple[datetime, str] | None = None
    """A first-user report owed by the installation, as the last :meth:`periodic` read it
    (see :func:`_owed_in`)."""
    outbox_due: float | None = None
    """When the outbox next has a report due, as each :meth:`periodic` read it (None:
    it was empty); :attr:`stored` says whether this reporter stored one since."""
    stored: bool = False

    def __post_init__(self) -> None:
        since = shape.iso(self.started_at)

        def opened(c: Conn) -> str:
            for key, value in (("instance_id", str(uuid.uuid4())), (SINCE, since)):
                c.execute(INSERT_KV_ONCE, (key, value))
            return str(get_in(c, "instance_id"))

        self.instance_id = self.store.run(opened)
        self._machine: MachineFacts | None = None
        self._folds = 0
        self._last_slot: int | None = None
        """The schedule's last slot as this reporter last read or set it."""
        self._now = self.started_at
        """The latest host ``now`` this reporter was given."""
        self._folded_at = self.started_at.timestamp()
        """The ``now`` of the last fold that committed (at first, the host start)."""
        self._remembered: tuple[datetime, str] | None = None
        """The earliest user this reporter last told the state of."""
        self._unsure: tuple[str, dict[str, int]] | None = None
        """A fold that raised: its number and counts, until :meth:`_resolve_fold`."""

    # Triggers ------------------------------------------------------------------

    def startup(self, now: datetime) -> Report | None:
        """The startup report of this host start, unless another process made it."""
        key = self._startup_key()
        report_id = self._claim(key, now)
        if report_id is None:
            return None
        moment = now.timestamp()
        if not schedule.startup_allowed(_recent(self.store.get(STARTUPS), moment), moment):
            settled, _ = self.store.settle(
                key, self.owner, lambda c: add_counters(c, {"startup.suppressed": 1})
            )
            if settled:
                log.warning(
                    "phonehome: host restarted often; this startup report is counted, not sent"
                )
            return None
        first_slot = str(self._current_slot(now))

        def started(c: Conn) -> None:
            # Read again inside the transaction: another start may have settled since.
            recent = _recent(get_in(c, STARTUPS), moment)
            c.execute(UPSERT_KV, (STARTUPS, json.dumps([*recent, moment])))
            # The startup report covers the slot it falls in: after a downtime longer
            # than the interval, no periodic report of the same counts follows it.
            last = get_in(c, LAST_SLOT)
            if last is None or int(last) < int(first_slot):
                c.execute(UPSERT_KV, (LAST_SLOT, first_slot))

        return self._build_and_store(key, "startup", now, report_id, started)

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
        return self.store.is_done(FIRST_USER) or (
            earliest is not None and earliest < self._kept(user)
        )

    def first_user(self, user: tuple[datetime, str], now: datetime) -> Report | None:
        """The first-user report, if ``user`` (created_at, email) is the installation's first.

        Users are ordered by creation time, then email, so that two processes
        creating users at the same instant agree on which one was first.
        """
        self.remember_earliest_user()
        earliest = self._earliest_user()
        if earliest is not None and earliest < self._kept(user):
            return None
        report_id = self._claim(FIRST_USER, now)
        if report_id is None:
            return None
        return self._build_and_store(FIRST_USER, "first_user", now, report_id)

    def periodic(self, now: datetime) -> Report | None:
        """The periodic report of the current slot, when it is due.

        A last slot more than one slot ahead of ``now`` was set by a tick from a clock
        that was wrong (ahead): the schedule goes by this clock again at once, instead
        of staying silent until the wrong date comes. A slot that is due by it but was
        reported already is not reported twice (its claim is done): the schedule
        moves past it.
        """
        current = self._current_slot(now)
        moment, interval = now.timestamp(), self.settings.interval
        key = ""
        folding = self._fold_work(now)

        def look(c: Conn) -> tuple[int, int | None, str | None, bool]:
            # One transaction for a handled tick: this process's counts folded, the
            # schedule, the slot's claim when it is due, whether a first-user report
            # is owed, and when the outbox next has a report due.
            nonlocal key
            if folding is not None:
                folding.work(c)
            self.outbox_due = self.outbox.next_due_in(c, moment)
            if not self.first_user_made:
                self.owed = _owed_in(c, self)
            c.execute(INSERT_KV_ONCE, (LAST_SLOT, str(current)))
            last = int(str(get_in(c, LAST_SLOT)))
            reset = last > current + 1
            if reset:
                last = current - 1
                c.execute(UPSERT_KV, (LAST_SLOT, str(last)))
            slot = schedule.periodic_slot(moment, last, self.instance_id, interval)
            if slot is None:
                return last, None, None, reset
            key = f"periodic:{slot}"
            judge = self._judge(key, moment)
            report_id = claim_in(c, key, self.owner, moment, shape.report_id(now), judge)
            if report_id is None and done_in(c, key):
                _move_last_slot(c, slot)
                last = max(last, slot)
            return last, slot, report_id, reset

        try:
            last, slot, report_id, reset = self.store.run(look)
        except BaseException:
            if folding is not None:
                folding.failed()
            raise
        if folding is not None:
            folding.committed()
        self._last_slot = last
        if reset:
            log.warning("phonehome: the last periodic report was made at a later time than now")
        if slot is None or report_id is None:
            return None
        built = self._build_and_store(
            key, "periodic", now, report_id, lambda c: c.execute(UPSERT_KV, (LAST_SLOT, str(slot)))
        )
        if built is not None:
            self._last_slot = slot
        return built

    def next_periodic(self, now: datetime) -> float:
        """Host-clock epoch seconds when the next periodic report falls due, as far as
        this process knows (the schedule as its last handled tick read it: another
        process may have moved it on since, which the next tick finds out)."""
        last = self._last_slot
        if last is None:
            stored = self.store.get(LAST_SLOT)
            last = self._current_slot(now) if stored is None else int(stored)
        return schedule.periodic_due_at(last, self.instance_id, self.settings.interval)

    def _current_slot(self, now: datetime) -> int:
        interval = self.settings.interval
        offset = schedule.offset(self.instance_id, interval)
        return schedule.slot_of(now.timestamp(), interval, offset)

    def _claim(self, key: str, now: datetime) -> str | None:
        """The report id of trigger ``key`` once this process holds its claim, else None.

        Another holder's claim is taken over only when that holder is known to be gone,
        or has held it unchanged for a lease on this process's own clock (:mod:`.owner`)."""
        moment = now.timestamp()
        judge = self._judge(key, moment)
        return self.store.claim_report(key, self.owner, moment, shape.report_id(now), judge)

    def _judge(self, key: str, moment: float) -> Callable[[str, float], bool]:
        """Whether another holder's claim of ``key`` may be taken over at ``moment``."""

        def may_take(holder: str, stamp: float) -> bool:
            return ownership.may_take(self.sightings, key, holder, stamp, moment)

        return may_take

    def retire(self) -> None:
        """This reporter builds nothing more: a claim it left unsettled is free at once
        for the other reporters of this process (see :func:`.owner.alive`)."""
        ownership.retire(self.owner)

    # Building ------------------------------------------------------------------

    def fold(self, now: datetime | None = None, inventory: bool = True) -> None:
        """Move this process's execution counts into the store's lifetime totals, and
        its inventory changes into the installation's entities (:mod:`.entities`), in
        one transaction; with ``inventory=False`` the counts only (and the earliest
        user), leaving the inventory's changes for the next fold.

        Exactly once, whatever fails: a fold that raised is resolved at the next one by
        reading back the fold's number (stored with it, under this reporter's own key):
        found, it committed (its ``COMMIT`` was cut off after the fact); not found, its
        counts ride again. Inventory changes are values, not sums, so they simply go
        again either way.

        ``now`` (default: the latest ``now`` this reporter was given) dates the
        changes; a sync in this process is dated by the previous fold (it came after
        it), or by the host start for the first one (:func:`.entities.apply`)."""
        pending = self._fold_work(now, inventory)
        if pending is None:
            return
        try:
            self.store.run(pending.work)
        except BaseException:
            pending.failed()
            raise
        pending.committed()

    def _fold_work(self, now: datetime | None, inventory: bool = True) -> _Fold | None:
        """What :meth:`fold` writes, as work for a transaction (this one's or another
        one's: a handled tick folds inside its one transaction), with what to do once
        it committed or failed; None when there is nothing to fold. Without
        ``inventory``, the inventory's changes stay where they are."""
        if now is not None:
            self._now = max(self._now, now)
        moment = self._now.timestamp()
        self._resolve_fold()
        delta = self.tally.take_delta()
        counts = {EXEC + status: n for status, n in delta.items() if n}
        # take_changes reads pending syncs first: at 100,000 pipelines that is seconds.
        changes = self.inventory.take_changes() if inventory else Changes()
        earliest = self.inventory.users.earliest
        if earliest == self._remembered:
            earliest = None  # told already
        if not counts and not changes and earliest is None:
            return None
        rows = changes.rows()
        states = {
            {"uns": entities.UNS_KEY, "license": entities.LICENSE_KEY}[key]: json.dumps(state)
            for key, state in changes.states.items()
        }
        self._folds += 1
        number = str(self._folds)
        since = self._folded_at

        def work(c: Conn) -> None:
            add_counters(c, counts)
            for module, (replaced, module_rows) in rows.items():
                if not replaced:
                    entities.apply(c, module, False, module_rows, moment)
                    continue
                entities.apply(c, module, True, module_rows, since)
                fresh = changes.fresh.get(module, set())
                later = [row for row in module_rows if row[0] in fresh]
                if later:
                    entities.apply(c, module, False, later, moment)
            entities.set_states(c, states)
            if earliest is not None:
                # With the fold, the installation learns of a user that may be its
                # first, even if this process dies before it can report it.
                _remember_in(c, self._kept(earliest))
            if counts:
                c.execute(UPSERT_KV, (self._fold_key(), number))

        def committed() -> None:
            if earliest is not None:
                self._remembered = earliest
            self._folded_at = moment

        def failed() -> None:
            self.inventory.give_back(changes)
            self._unsure = (number, delta) if counts else None

        return _Fold(work, committed, failed)

    def _fold_key(self) -> str:
        return f"{FOLDED}{self.owner}"

    def _resolve_fold(self) -> None:
        """Settle a fold whose outcome is unknown (see :meth:`fold`); raises, and stays
        unknown, while the state cannot be read."""
        if self._unsure is None:
            return
        number, delta = self._unsure
        if self.store.get(self._fold_key()) != number:
            self.tally.give_back(delta)
        self._unsure = None

    def forget_folds(self) -> None:
        """At shutdown, after the last fold: this reporter's fold number is needed no more."""
        if self._unsure is None:
            key = self._fold_key()
            self.store.run(lambda c: c.execute("DELETE FROM kv WHERE key=?", (key,)))

    def installation_inventory(self) -> InstallationCounts:
        """What the whole installation holds, counted, from its shared state (every
        process's changes folded so far, this one's included)."""
        counted, states = self.store.run(lambda c: (entities.counts(c), entities.states(c)))
        return _inventory(counted, states)

    def remember_earliest_user(self) -> None:
        """Keep the earliest user ever known, for ``first_email`` after deletions."""
        self.inventory.settle()
        found = self.inventory.users.earliest
        if found is not None:
            kept = self._kept(found)
            self.store.run(lambda c: _remember_in(c, kept))
            self._remembered = found

    def _kept(self, user: tuple[datetime, str]) -> tuple[datetime, str]:
        """``user`` as the state keeps it: under ``privacy.email: omit`` no email at all
        (none is ever reported, so none is stored), only the creation time."""
        return (user[0], "") if self.settings.privacy.get("email") == "omit" else user

    def _earliest_user(self) -> tuple[datetime, str] | None:
        raw = self.store.get(EARLIEST)
        return None if raw is None else _user(raw)

    def build(
        self, trigger: Trigger, now: datetime, sequence: int = 0, report_id: str = ""
    ) -> Report:
        """A complete report for ``trigger``; neither stored nor counted as sent.
        ``report_id`` is the claim's (a new one when empty).

        Reads the state once, in one transaction, after everything slow (the lookup,
        the collectors): the earliest user, the installation's inventory, every
        counter and the privacy key (:class:`_Snapshot`)."""
        self.fold(now)
        located = self._location(now)
        wanted = self.settings.categories.collector_on
        sections, errors = self.registry.collect_all(self.drops, wanted)
        sections, left_out = shape.trimmed_sections(sections)
        if left_out:
            self.drops.add("collector_key", left_out)
        dropped = {f"privacy.{reason}": n for reason, n in self.drops.take().items()}
        forget_location = not location.wanted(self.settings)
        snap = self.store.run(lambda c: _snapshot(c, dropped, forget_location))
        earliest = None if snap.earliest is None else _user(snap.earliest)
        inputs = shape.Inputs(
            instance_id=self.instance_id,
            sequence=sequence,
            trigger=trigger,
            now=now,
            started_at=self.started_at,
            system={**self.host, **self._machine_facts(), "public_ip": located["public_ip"]},
            location=located,
            inventory=_inventory(snap.counts, snap.states),
            first_email=None if earliest is None else earliest[1],
            executions=snap.counters(EXEC),
            executions_before=snap.counters(EXEC_REPORTED),
            collectors=sections,
            diagnostics=_diagnostics(errors, snap),
            report_id=report_id,
        )
        built = shape.build(inputs)
        shape.apply_privacy(built, self.settings.privacy, bytes.fromhex(snap.salt))
        shape.switch_off(built, self.settings, list(self.registry.collectors))
        return built

    def _build_and_store(
        self,
        key: str,
        trigger: Trigger,
        now: datetime,
        report_id: str,
        then: Callable[[Conn], object] | None = None,
    ) -> Report | None:
        """Settle the claimed trigger ``key``: build its report (outside any
        transaction: the build may wait on a lookup or a collector), check it against
        the schema, then in one transaction with the claim's end (:meth:`Store.settle`)
        give it the next sequence number, store it in the outbox, take the counts it
        carries and run ``then`` (the schedule moved on). A report the schema refuses
        is counted instead (``schema.invalid``), ``then`` run all the same: None. None
        too when the claim was lost meanwhile (its new owner settles it)."""
        # Checked with a stand-in sequence: the real one is known only as it is stored.
        built = self.build(trigger, now, 1, report_id)
        problems = schema.errors(built)
        if problems:

            def refused(c: Conn) -> None:
                # Fail closed: a report the schema does not vouch for is never sent.
                add_counters(c, {"schema.invalid": 1})
                if then is not None:
                    then(c)

            if self.store.settle(key, self.owner, refused)[0]:
                log.error(
                    "phonehome: %s report failed its schema, not sent: %s",
                    trigger,
                    "; ".join(problems[:5]),
                )
            return None

        def stored(c: Conn) -> None:
            built["sequence"] = next_sequence(c)
            entry = Entry(
                report_id, built["sequence"], trigger, now.timestamp(), shape.encode(built)
            )
            self.outbox.put_in(c, entry, now.timestamp())
            # What was reported is no longer news: the counts that rode along are taken.
            take_counters(c, EXEC_REPORTED)
            reported = shape.status_counts(built["executions"]["by_status"])
            add_counters(c, {EXEC_REPORTED + s: n for s, n in reported.items()})
            add_counters(c, _carried(built["diagnostics"]))
            if then is not None:
                then(c)

        settled, _ = self.store.settle(key, self.owner, stored)
        if settled:
            self.stored = True
        return built if settled else None

    def _location(self, now: datetime) -> dict[str, Any]:
        if self.settings.mode != "send":
            return dict(location.EMPTY)
        if not location.wanted(self.settings):
            # No lookup: what an earlier one found is emptied by the state's snapshot
            # (_snapshot), in the report's own transaction.
            return dict(location.EMPTY)
        return location.lookup(self.settings, self.store, now.timestamp())

    def _machine_facts(self) -> MachineFacts:
        if self._machine is None:
            self._machine = self.machine()
        return self._machine


@dataclass(frozen=True)
class _Fold:
    """A fold's work for a transaction, and what follows its commit or its failure."""

    work: Callable[[Conn], None]
    committed: Callable[[], None]
    failed: Callable[[], None]


@dataclass(frozen=True)
class _Snapshot:
    """What a report reads of the state, read in one transaction (:func:`_snapshot`)."""

    earliest: str | None
    counts: entities.Counts
    states: dict[str, str]
    all_counters: dict[str, int]
    salt: str

    def counters(self, prefix: str) -> dict[str, int]:
        """The counters under ``prefix``, keyed by the rest of the name."""
        return {
            name[len(prefix) :]: value
            for name, value in self.all_counters.items()
            if name.startswith(prefix)
        }


def _snapshot(c: Conn, dropped: dict[str, int], forget_location: bool) -> _Snapshot:
    """Add the privacy guard's new drops (and empty the location cache when no lookup
    may be made), then read what a report needs."""
    add_counters(c, dropped)
    if forget_location:
        c.execute("UPDATE kv SET value = '' WHERE key = ? AND value <> ''", (location.CACHE_KEY,))
    c.execute(INSERT_KV_ONCE, ("privacy.salt", os.urandom(32).hex()))
    rows = c.execute("SELECT name, value FROM counters").fetchall()
    return _Snapshot(
        earliest=get_in(c, EARLIEST),
        counts=entities.counts(c),
        states=entities.states(c),
        all_counters={str(name): int(value) for name, value in rows},
        salt=str(get_in(c, "privacy.salt")),
    )


def _inventory(counted: entities.Counts, states: dict[str, str]) -> InstallationCounts:
    by_name = {
        name: states[key]
        for name, key in (("uns", entities.UNS_KEY), ("license", entities.LICENSE_KEY))
        if key in states
    }
    return InstallationCounts(counted, by_name)


def _diagnostics(errors: dict[str, str], snap: _Snapshot) -> Diagnostics:
    delivery = snap.counters("delivery.")
    return {
        "collector_errors": errors,
        "delivery": {
            "dropped": delivery.get("dropped", 0),
            "failed": delivery.get("failed", 0),
            "retried": delivery.get("retried", 0),
            "evicted": delivery.get("evicted", 0),
            "rejected": delivery.get("rejected", 0),
        },
        "privacy_dropped": {k: n for k, n in snap.counters("privacy.").items() if n},
        "suppressed_startups": snap.counters("startup.").get("suppressed", 0),
        "invalid_reports": snap.counters("schema.").get("invalid", 0),
        "switched_off": [],  # filled in by shape.switch_off
    }


def _owed_in(c: Conn, reporter: Reporter) -> tuple[datetime, str] | None:
    """The installation's earliest user, while its first-user report is owed, inside a
    transaction open on ``c`` (it also notes :attr:`Reporter.first_user_made`).

    Owed: the user was created after the first host start that opened the
    installation's state began (:data:`SINCE`, so under telemetry), and no first-user
    report was made. Any process then makes it (its claim's holder first, while
    alive): so a creating process that died, or that could not reach the state, loses
    no first-user report, once any process knows that user (a fold carries it over;
    after a crash, a host start's inventory). A user from before the plugin's time is
    not "created" as far as telemetry goes, and is owed nothing."""
    reporter.first_user_made = done_in(c, FIRST_USER)
    raw, since = get_in(c, EARLIEST), get_in(c, SINCE)
    if raw is None or since is None or reporter.first_user_made:
        return None
    earliest = _user(raw)
    return None if earliest[0] <= datetime.fromisoformat(since) else earliest


def _remember_in(c: Conn, user: tuple[datetime, str]) -> None:
    """The installation's earliest user is ``user`` if it is earlier than the one kept."""
    raw = get_in(c, EARLIEST)
    if raw is None or user < _user(raw):
        c.execute(UPSERT_KV, (EARLIEST, json.dumps([user[0].isoformat(), user[1]])))


def _user(raw: str) -> tuple[datetime, str]:
    at, email = json.loads(raw)
    return datetime.fromisoformat(at).astimezone(UTC), str(email)


def _recent(raw: str | None, now: float) -> list[float]:
    """The startups of the last hour, from their stored list (one stamped later than
    ``now``, by a clock that was ahead, is not counted, and so not kept)."""
    return [t for t in json.loads(raw or "[]") if 0 <= now - t < 3600]


def _move_last_slot(c: Conn, slot: int) -> None:
    """The schedule's last slot is at least ``slot`` (never moved back here)."""
    last = get_in(c, LAST_SLOT)
    if last is None or int(last) < slot:
        c.execute(UPSERT_KV, (LAST_SLOT, str(slot)))


def _carried(diagnostics: Diagnostics) -> dict[str, int]:
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
    return taken
