"""The plugin's own thread: everything slow happens here, never on the host's.

The host's hooks only drop a note in the mailbox (the latest ``now``, a
created user's ``created_at``) and return. The worker opens the state store,
builds, stores and sends reports, and tells the host-facing side when it next
needs a tick (:attr:`Worker.wake_at`), so that most ticks cost one comparison.

Threads and forks, decided here once for the whole plugin:

- There is no thread until there is work. A thread is started for a batch of
  notes and ends when the mailbox is empty (at most every minute or so, when the
  counts are folded into the store), so a host that forks between ticks, or
  between ``on_startup`` and its first tick, forks a process with no thread of the
  plugin in it: nothing can be torn, and Python 3.12+ has no reason to warn.
- Every module a job uses is imported when this module is (in ``on_startup``,
  on the host's thread, once per host start), never lazily on the worker thread:
  a fork can never hand a child a half-imported module or an import lock held by
  a thread that is gone. ``tests/test_worker_imports.py`` proves no job imports.
- A fork while a job runs: SQLite calls are fenced by :mod:`.forksafe`; the
  child gets a new :class:`Worker` (see :meth:`.runtime.Runtime`) and leaves the
  parent's notes, connections and sockets to the parent.
"""

from __future__ import annotations

# Besides what this module uses, everything a job needs is imported here, now
# (see the module docstring): hashlib and hmac (privacy, schedule), netrc (read
# by requests for proxies and credentials), psutil (system facts), requests
# (transport, location), tenacity (retries), the SQLite backend of the store.
import hashlib  # noqa: F401
import hmac  # noqa: F401
import importlib
import logging
import netrc  # noqa: F401
import threading
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta

import psutil  # noqa: F401
import requests
import requests.adapters  # noqa: F401
import tenacity  # noqa: F401

from hookspecs import App
from phonehome_plugin.admin import startrecord
from phonehome_plugin.config.settings import Settings
from phonehome_plugin.config.switch import without_credentials
from phonehome_plugin.counting.collectors import Registry
from phonehome_plugin.counting.inventory import Inventory
from phonehome_plugin.counting.tally import ExecutionTally
from phonehome_plugin.delivery.retry import RETRY_AFTER_MAX, RetryPolicy
from phonehome_plugin.delivery.sender import Sender
from phonehome_plugin.delivery.transport import Transport
from phonehome_plugin.reports.system import MachineFacts, host_facts, machine_facts
from phonehome_plugin.reports.triggers import Reporter
from phonehome_plugin.state import forksafe, history, sqlite, waiting  # noqa: F401
from phonehome_plugin.state.backends import open_store
from phonehome_plugin.state.outbox import Outbox, Pace
from phonehome_plugin.state.store import StateUnavailableError, Store

log = logging.getLogger(__name__)

FOLD_EVERY = timedelta(seconds=60)
MAX_PENDING_TICKS = 64
FAR_PAST = datetime.min.replace(tzinfo=UTC)
FAR_FUTURE = datetime.max.replace(tzinfo=UTC)
STARTUP_RECHECK = timedelta(seconds=5)
CLOCK_JUMP = timedelta(minutes=10)
"""A handled tick this far past the one before is not trusted to plan the next wake-up."""
OPEN_RETRY_FIRST = timedelta(seconds=10)
OPEN_RETRY_MOST = timedelta(minutes=5)
"""Host-clock waits between tries to reach an unreachable state: doubling up to this."""


def preload(settings: Settings) -> None:
    """Import what only some installations use (the PostgreSQL backend) before any job."""
    if settings.state_url:
        importlib.import_module("phonehome_plugin.state.postgres")
        with suppress(ImportError):  # open_pg_store says so, once, when it opens
            importlib.import_module("psycopg")


class Worker:
    """Owns the state store and the sender; all its methods but ``_run`` are thread-safe."""

    def __init__(
        self,
        settings: Settings,
        app: App,
        inventory: Inventory,
        tally: ExecutionTally,
        registry: Registry,
        policy: RetryPolicy | None = None,
        machine: Callable[[], MachineFacts] | None = None,
    ) -> None:
        self.settings = settings
        self.app = app
        self.inventory = inventory
        self.tally = tally
        self.registry = registry
        self.policy = policy or RetryPolicy(deadline=settings.timeout)
        self.machine = machine
        self.wake_at = FAR_PAST
        self.cancel = threading.Event()
        self._cond = threading.Condition()
        # Every tick that passed the host side's wake_at check, in order: a host
        # (or a test) may tick faster than reports are built, and each slot it
        # crossed still deserves its periodic report. Bounded, oldest dropped.
        self._nows: deque[datetime] = deque(maxlen=MAX_PENDING_TICKS)
        self._users: list[tuple[datetime, str]] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._started = False
        self._startup_pending = False
        self._pending_users: list[tuple[datetime, str]] = []
        self._last_failure: str | None = None
        self._failed_open = False
        self._waiting_since: datetime | None = None
        """The host's ``now`` when the shared state was first found unreachable, while it is."""
        self._retry_at = FAR_PAST
        self._backoff = OPEN_RETRY_FIRST
        self._planned_from: datetime | None = None
        self.store: Store | None = None
        self.reporter: Reporter | None = None
        self.sender: Sender | None = None
        preload(settings)

    # Host side (any thread) --------------------------------------------------------

    def tick(self, now: datetime) -> None:
        with self._cond:
            self._nows.append(now)
            self._wake()

    def user_created(self, user: tuple[datetime, str]) -> None:
        """Note a created user, ``(created_at, email)``; it may be the first."""
        with self._cond:
            self._users.append(user)
            self.wake_at = FAR_PAST
            self._wake()

    def _wake(self) -> None:
        """Start a thread for the notes, unless one is running (``_cond`` is held)."""
        if self._thread is None and not self._stopping:
            self._start_thread()

    def _start_thread(self) -> None:
        """(``_cond`` is held.) The thread waits for it before looking at the notes."""
        self._thread = threading.Thread(target=self._run, name="phonehome-worker", daemon=True)
        self._thread.start()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every note in the mailbox has been handled (for tests and the demo)."""
        with self._cond:
            return self._cond.wait_for(self._idle, timeout)

    def _idle(self) -> bool:
        return self._thread is None and not self._nows and not self._users

    def stop(self, timeout: float) -> bool:
        """Fold the counts and close, on a thread of the worker's; True if done in time."""
        with self._cond:
            if self._stopping:
                thread = self._thread
            else:
                self._stopping = True
                if self._thread is None and (
                    self.store is not None or self._unsaved() or self._waiting_since is not None
                ):
                    self._start_thread()  # counts saved, a waiting note cleared: ours to do
                thread = self._thread
        self.cancel.set()
        if self.sender is not None:
            self.sender.transport.wake()  # a request in flight ends now, not at its next poll
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _unsaved(self) -> bool:
        return any(self.tally.totals().values())

    # Worker thread -------------------------------------------------------------------

    def _run(self) -> None:
        """Handle notes until the mailbox is empty, then end (at shutdown: save and close)."""
        try:
            while self._next_job():
                if self._ready():
                    self._guarded("handling a tick", self._handle)
            if self.store is not None and not self._stopping:
                # Between jobs (a minute or so apart) no database connection is held:
                # a large installation's processes do not sit on the server's slots.
                self._guarded("releasing the state's connection", self.store.release)
            if self._stopping and (self.store is not None or self._unsaved()):
                if self._ready():
                    self._guarded("saving counts at shutdown", self._final)
                elif self._unsaved():
                    log.warning(
                        "phonehome: the installation's state is out of reach at shutdown; "
                        "this process's unsaved counts are lost"
                    )
            if self._stopping and self._waiting_since is not None:
                waiting.clear(self.app.data_dir)
        finally:
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None
                self._cond.notify_all()

    def _next_job(self) -> bool:
        """True while there are notes to handle. When there are none the thread gives
        up its place in the same critical section, so a note added a moment later
        starts a new thread instead of waiting for this one."""
        with self._cond:
            self._cond.notify_all()
            if self._stopping:
                return False
            if not self._nows and not self._users:
                self._thread = None
                return False
            return True

    def _ready(self) -> bool:
        """The store and its helpers, opened on the first job; False if they cannot be.

        When the installation's shared state cannot be reached now, the process keeps
        no state of its own (it would report as an installation of its own): its
        counts stay in the tally, a created user waits among the unsettled ones, the
        ticks are dropped (the schedule needs none of them to catch up) and the open
        is tried again, backing off, at a later tick; once it succeeds, the counts
        are folded and the triggers handled as if the process had just started."""
        with self._cond:
            moments = [*self._nows, *(user[0] for user in self._users)]
        now = max(moments) if moments else None
        if self.store is None and not self._failed_open and self._open_due(now):
            try:
                self.store = self._open()
            except StateUnavailableError as error:
                self._unavailable(error, now)
                if error.lasting:
                    self._failed_open = True
            else:
                self._failed_open = self.store is None
                if self.store is not None and self._waiting_since is not None:
                    log.warning("phonehome: reached the installation's state; reporting again")
                    self._waiting_since = None
                    waiting.clear(self.app.data_dir)
        if self.store is None:
            with self._cond:  # the notes cannot be handled now
                self._nows.clear()
                self._pending_users.extend(self._users)
                self._users = []
                self.wake_at = FAR_FUTURE if self._failed_open else self._retry_at
        return self.store is not None

    def _open_due(self, now: datetime | None) -> bool:
        """Whether to try opening the store now (always, until a try has failed)."""
        return self._waiting_since is None or now is None or now >= self._retry_at

    def _unavailable(self, error: StateUnavailableError, now: datetime | None) -> None:
        """Say once that the state cannot be reached, and when to try again."""
        at = now or FAR_PAST
        if self._waiting_since is None:
            self._waiting_since = at
            self._backoff = OPEN_RETRY_FIRST
            log.warning(
                "phonehome: %s; %s",
                error,
                "telemetry is off for this process"
                if error.lasting
                else "counting in this process, no report from it until it reaches the "
                "state (trying again, backing off)",
            )
            waiting.note(self.app.data_dir, 0.0 if now is None else now.timestamp(), str(error))
        else:
            self._backoff = min(self._backoff * 2, OPEN_RETRY_MOST)
        self._retry_at = at + self._backoff

    def _open(self) -> Store | None:
        # The store is opened on the first job, not at startup: until the host's
        # first tick the plugin costs no file and no memory beyond its counters.
        try:
            store = open_store(self.app.data_dir, self.settings.state_url)
            # The longest wait the sender sets: backoff (at most the interval) or
            # Retry-After (at most RETRY_AFTER_MAX), plus one series' deadline.
            horizon = max(self.settings.interval, RETRY_AFTER_MAX) + self.settings.timeout
            outbox = Outbox(
                store,
                self.settings.outbox,
                horizon=horizon,
                endpoint=without_credentials(self.settings.endpoint),
                pace=Pace(),  # a backlog (after mode offline) drains at a bounded rate
            )
            self.reporter = Reporter(
                settings=self.settings,
                store=store,
                outbox=outbox,
                inventory=self.inventory,
                tally=self.tally,
                registry=self.registry,
                host=host_facts(self.app.version, self.app.edition),
                started_at=self.app.started_at,
                machine=self.machine or machine_facts,
            )
            self.sender = Sender(
                outbox, Transport(self.settings), self.policy, self.settings.interval, self.cancel
            )
            # What this start decided, for `phonehome status`, and the notice if due.
            startrecord.host_started(store, self.settings, self.app, self.machine or machine_facts)
            return store
        except forksafe.ForkedMidCallError:
            return None  # said once, at the fork
        except StateUnavailableError:
            raise
        except Exception:
            log.exception("phonehome: could not start; telemetry is off for this process")
            return None

    def _handle(self) -> None:
        with self._cond:
            ticks, users = list(self._nows), self._users
            self._nows.clear()
            self._users = []
        assert self.reporter is not None
        reporter = self.reporter
        # A user created between ticks is reported at once, on its own creation time.
        now = ticks[-1] if ticks else max(user[0] for user in users)
        if ticks and not self._started:
            # The first tick comes after every module synced its inventory.
            self._started = self._startup_pending = True
        if self._startup_pending and ticks:
            reporter.startup(ticks[0])
            self._startup_pending = not reporter.startup_settled()
        if self._started and not self._startup_pending:
            candidates = [*self._pending_users, *users]
            if not reporter.first_user_made:
                # Owed by the installation (its creator died, or could not reach the
                # state): any process makes it, once its claim's holder is gone. As
                # the last handled tick read it (each reads it with the schedule).
                owed = reporter.owed
                if owed is not None and owed not in candidates:
                    candidates.append(owed)
            # Triggers another process claimed are kept until settled: if that process
            # dies before storing the report, this one takes over (see state.owner).
            self._pending_users = [
                user
                for user in candidates
                if reporter.first_user(user, max(now, user[0])) is None
                and not reporter.first_user_settled(user)
            ]
        else:
            # The startup report is a start's first: a user created before it (before
            # the first tick, or while another process holds the startup claim) waits.
            self._pending_users.extend(users)
        for moment in ticks:
            if self._startup_pending:
                reporter.startup(moment)
                self._startup_pending = not reporter.startup_settled()
            reporter.periodic(moment)
        reporter.fold(now)
        self._plan(now, self._deliver(now))

    def _deliver(self, now: datetime) -> bool:
        """Send (or log) what the outbox has due; False when it is known to have
        nothing due (as this handle's one transaction read it) and nothing was
        stored since, so that an idle tick costs that one transaction only."""
        assert self.sender is not None and self.reporter is not None
        reporter, moment = self.reporter, now.timestamp()
        due = reporter.outbox_due
        if not reporter.stored and (due is None or due > moment):
            return False
        reporter.stored = False
        mode = self.settings.mode
        if mode == "send":
            self.sender.deliver_due(moment)
        elif mode == "log":
            outbox = self.sender.outbox
            for entry in outbox.due(moment):
                log.warning("phonehome: mode log, report not sent: %s", entry.body.decode())
                event = history.Event(
                    entry.report_id,
                    entry.sequence,
                    entry.trigger,
                    moment,
                    "logged",
                    "mode log",
                )
                outbox.logged(entry, event)  # one transaction: no crash can split the two
        return True

    def _plan(self, now: datetime, delivered: bool) -> None:
        assert self.reporter is not None and self.sender is not None
        moments = [now + FOLD_EVERY, _at(self.reporter.next_periodic(now))]
        sender = self.sender
        if not delivered:
            retry_at = self.reporter.outbox_due  # as this handle's one transaction read it
        elif sender.next_due_known:
            retry_at = sender.next_due  # as the last crossing-off read it
        else:
            retry_at = sender.outbox.next_due(now.timestamp())
        if retry_at is not None and self.settings.mode == "send":
            moments.append(_at(retry_at))
        if not self._started:
            moments.append(FAR_PAST)  # the start's first report waits for the next tick
        elif self._planned_from is not None and now - self._planned_from > CLOCK_JUMP:
            # Far past the last tick handled: the host slept, or its clock jumped ahead.
            # Planned from this ``now``, a clock that comes back would find every tick
            # "early" for as long as it jumped; the next tick decides instead.
            moments.append(FAR_PAST)
        elif self._startup_pending:
            # Another process holds the startup claim: look again soon, for the startup
            # report and the users waiting behind it.
            moments.append(now + STARTUP_RECHECK)
        self._planned_from = now
        with self._cond:
            if not self._users:
                self.wake_at = min(moments)

    def _final(self) -> None:
        try:
            if self.reporter is not None:
                self.reporter.retire()
                # The counts first, on their own: they exist nowhere else, while the
                # inventory's changes are values the host syncs again at its next
                # start, and taking them can outlast the shutdown wait (a large
                # installation synced just before: seconds at 100,000 pipelines).
                self.reporter.fold(inventory=False)  # the earliest user rides with it
                self.reporter.fold()
                self.reporter.forget_folds()
            if self.sender is not None:
                self.sender.transport.close()
        finally:
            if self.store is not None:
                self.store.close()

    def _guarded(self, doing: str, step: Callable[[], None]) -> None:
        """Run ``step``; a failure is logged once with its traceback, and its repeats
        (a database that stays down, say) only at debug level until a step succeeds."""
        try:
            step()
            self._last_failure = None
        except Exception as error:
            failure = f"{doing}: {type(error).__name__}: {error}"
            if failure != self._last_failure:
                log.exception("phonehome: failed while %s; telemetry carries on", doing)
            else:
                log.debug("phonehome: failed again while %s", doing, exc_info=True)
            self._last_failure = failure


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
