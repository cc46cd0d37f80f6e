"""The plugin's own thread: everything slow happens here, never on the host's.

The host's hooks only drop a note in the mailbox (the latest ``now``, a
created user's ``created_at``) and return. The worker opens the state store,
builds, stores and sends reports, and tells the host-facing side when it next
needs a tick (:attr:`Worker.wake_at`), so that most ticks cost one comparison.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from phonehome_plugin.collectors import Registry
from phonehome_plugin.config import Settings
from phonehome_plugin.inventory import Inventory
from phonehome_plugin.policy import Policy
from phonehome_plugin.switch import without_credentials
from phonehome_plugin.tally import ExecutionTally

if TYPE_CHECKING:
    from phonehome_plugin.reporter import Reporter
    from phonehome_plugin.sender import Sender
    from phonehome_plugin.store import Store

log = logging.getLogger(__name__)

# A fork while the worker imports its modules would leave the child with half
# initialised modules, so a fork waits until the imports are done.
_IMPORTING = threading.Lock()


def _fresh_lock_in_child() -> None:
    global _IMPORTING  # noqa: PLW0603  (the child's copy may be held by a thread that is gone)
    _IMPORTING = threading.Lock()


def _before_fork() -> None:
    _IMPORTING.acquire()


def _after_fork_in_parent() -> None:
    _IMPORTING.release()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_fresh_lock_in_child
)

FOLD_EVERY = timedelta(seconds=60)
MAX_PENDING_TICKS = 64
NOTICE_KEY = "notice.logged_at"
FAR_PAST = datetime.min.replace(tzinfo=UTC)
NOTICE = (
    "phonehome: MaestroHub telemetry is on. Reports of aggregate counts and system "
    "metadata (version, OS, hostname, public IP and approximate location, license, "
    "user count and the first admin email, connection/pipeline/UNS/execution counts) "
    "go to %s (mode %s) at startup, once at the first user's creation, and every %d s. Turn it "
    "off with `modules.phonehome.enabled: false` in config.yaml, or "
    "MAESTROHUB_PHONEHOME_ENABLED=false, or DO_NOT_TRACK=1; `phonehome preview` shows "
    "the next report."
)


class Worker:
    """Owns the state store and the sender; all its methods but ``run`` are thread-safe."""

    def __init__(
        self,
        settings: Settings,
        app: Any,
        inventory: Inventory,
        tally: ExecutionTally,
        registry: Registry,
        policy: Policy | None = None,
        machine: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.app = app
        self.inventory = inventory
        self.tally = tally
        self.registry = registry
        self.policy = policy or Policy(deadline=settings.timeout)
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
        self._busy = False
        self._started = False
        self._startup_pending = False
        self._pending_users: list[tuple[datetime, str]] = []
        self._last_failure: str | None = None
        self._thread = threading.Thread(target=self.run, name="phonehome-worker", daemon=True)
        self.reporter: Reporter | None = None
        self.sender: Sender | None = None

    # Host side (any thread) --------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def tick(self, now: datetime) -> None:
        with self._cond:
            self._nows.append(now)
            self._cond.notify_all()

    def user_created(self, user: tuple[datetime, str]) -> None:
        """Note a created user, ``(created_at, email)``; it may be the first."""
        with self._cond:
            self._users.append(user)
            self.wake_at = FAR_PAST
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every note in the mailbox has been handled (for tests and the demo)."""
        with self._cond:
            return (
                self._cond.wait_for(lambda: self._idle() or not self._thread.is_alive(), timeout)
                and self._idle()
            )

    def _idle(self) -> bool:
        return not self._busy and not self._nows and not self._users

    def stop(self, timeout: float) -> bool:
        """Ask the worker to fold its counts and close; True if it finished in time."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self.cancel.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # Worker thread -------------------------------------------------------------------

    def run(self) -> None:
        # The store is opened on the first job, not at thread start: until the
        # host's first tick the plugin costs no imports, no file and no memory
        # beyond its counters.
        store: Store | None = None
        try:
            while self._next_job():
                store = store or self._open()
                if store is None:
                    return
                self._guarded("handling a tick", self._handle)
            if store is None and any(self.tally.totals().values()):
                store = self._open()
        finally:
            if store is not None:
                self._guarded("saving counts at shutdown", self._final)
                store.close()
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _open(self) -> Store | None:
        try:
            # Imported here, on this thread: requests, tenacity, psutil and sqlite3
            # cost milliseconds that the host's startup should not pay. The lock
            # makes a fork wait for them (see _IMPORTING).
            with _IMPORTING:
                from phonehome_plugin.outbox import Outbox
                from phonehome_plugin.reporter import Reporter
                from phonehome_plugin.sender import Sender
                from phonehome_plugin.store import open_store
                from phonehome_plugin.system import host_facts, machine_facts
                from phonehome_plugin.transport import Transport

            store = open_store(self.app.data_dir, self.settings.state_url)
            outbox = Outbox(store, self.settings.outbox)
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
            if store.get(NOTICE_KEY) is None:
                where = without_credentials(self.settings.endpoint)
                log.warning(NOTICE, where, self.settings.mode, self.settings.interval)
                store.set(NOTICE_KEY, "logged")
            return store
        except Exception:
            log.exception("phonehome: could not start; telemetry is off for this process")
            return None

    def _next_job(self) -> bool:
        with self._cond:
            self._busy = False
            self._cond.notify_all()
            while not self._nows and not self._users and not self._stopping:
                self._cond.wait()
            self._busy = True
            return not self._stopping

    def _handle(self) -> None:
        with self._cond:
            ticks, users = list(self._nows), self._users
            self._nows.clear()
            self._users = []
        assert self.reporter is not None
        reporter = self.reporter
        # A user created between ticks is reported at once, on its own creation time.
        now = ticks[-1] if ticks else max(user[0] for user in users)
        # Triggers another process claimed are kept until settled: if that process
        # died before storing the report, this one takes over when the lease ends.
        self._pending_users = [
            user
            for user in [*self._pending_users, *users]
            if reporter.first_user(user, max(now, user[0])) is None
            and not reporter.first_user_settled(user)
        ]
        for moment in ticks:
            if not self._started:
                # The first tick comes after every module synced its inventory.
                self._started = self._startup_pending = True
            if self._startup_pending:
                reporter.startup(moment)
                self._startup_pending = not reporter.startup_settled()
            reporter.periodic(moment)
        reporter.fold()
        self._deliver(now)
        self._plan(now)

    def _deliver(self, now: datetime) -> None:
        from phonehome_plugin import history

        assert self.sender is not None
        mode = self.settings.mode
        if mode == "send":
            self.sender.deliver_due(now.timestamp())
        elif mode == "log":
            outbox = self.sender.outbox
            for entry in outbox.due(now.timestamp()):
                log.warning("phonehome: mode log, report not sent: %s", entry.body.decode())
                event = history.Event(
                    entry.report_id,
                    entry.sequence,
                    entry.trigger,
                    now.timestamp(),
                    "logged",
                    "mode log",
                )
                outbox.logged(entry, event)  # one transaction: no crash can split the two

    def _plan(self, now: datetime) -> None:
        assert self.reporter is not None and self.sender is not None
        moments = [now + FOLD_EVERY, _at(self.reporter.next_periodic(now))]
        retry_at = self.sender.outbox.next_due()
        if retry_at is not None and self.settings.mode == "send":
            moments.append(_at(retry_at))
        with self._cond:
            if not self._users:
                self.wake_at = min(moments)

    def _final(self) -> None:
        if self.reporter is not None:
            self.reporter.fold()
            self.reporter.remember_earliest_user()
        if self.sender is not None:
            self.sender.transport.close()

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
