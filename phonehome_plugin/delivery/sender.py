"""Delivering the outbox: each due report goes through one send series.

Reports are leased one at a time (see :mod:`.outbox`), oldest first. A 2xx
removes the report and records it in the history; a final answer removes it as
a counted loss; anything else leaves it in the outbox, closes the outbox's gate
until a not-before time (:func:`.retry.not_before`) and stops this round, since
the endpoint is evidently unwell. A series cut short by shutdown changes
nothing: the report is due again at the next start. A transport that can send
nothing at all (an unusable client certificate: it said so in one log line when it was
made) is not tried: the reports wait, untouched, until a restart with fixed settings.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from phonehome_plugin.delivery import retry
from phonehome_plugin.delivery.answer import Answer
from phonehome_plugin.delivery.retry import RetryPolicy
from phonehome_plugin.delivery.transport import Transport
from phonehome_plugin.state import history
from phonehome_plugin.state.outbox import FAILURES_KEY, Entry, Outbox

__all__ = ["FAILURES_KEY", "LEASE", "Sender"]

log = logging.getLogger(__name__)

LEASE = 300.0
"""Host-clock seconds a report being sent is hidden from other processes (at least
twice the series deadline). A process killed mid-send delays that report this long."""


@dataclass
class Sender:
    """Sends due outbox entries through ``transport``; used by the worker thread only."""

    outbox: Outbox
    transport: Transport
    policy: RetryPolicy
    interval: float
    cancel: threading.Event
    next_due: float | None = field(default=None, init=False)
    """After :meth:`deliver_due`, when :attr:`next_due_known`: the outbox's next due
    time as the last crossing-off read it (None: empty), so no one reads it again."""
    next_due_known: bool = field(default=False, init=False)

    def deliver_due(self, now: float) -> int:
        """Try every report due at ``now`` (host clock); returns how many were delivered."""
        delivered = 0
        self.next_due_known = False
        if self.transport.refused:
            return delivered
        hold = max(LEASE, 2 * self.policy.deadline)
        while not self.cancel.is_set():
            entry = self.outbox.lease(now, hold)
            if entry is None:
                break
            result = self._deliver(entry, now)
            if result == "sent":
                delivered += 1
            elif result != "rejected":
                break
            if self.next_due_known and (self.next_due is None or self.next_due > now):
                break  # the crossing-off read nothing more due: no lease to look
        return delivered

    def _deliver(self, entry: Entry, now: float) -> str:
        def post(time_left: float) -> Answer:
            return self.transport.post(entry.body, entry.report_id, time_left, self.cancel)

        outcome = retry.send_series(post, self.policy, self.cancel)
        answer = outcome.answer
        verdict = retry.verdict(answer)
        detail = answer.describe()
        counts = {"delivery.retried": max(0, outcome.attempts - 1)}
        event = history.Event(entry.report_id, entry.sequence, entry.trigger, now, verdict, detail)
        if verdict == "sent":
            self.next_due, self.next_due_known = self.outbox.sent(entry, event, counts), True
            return verdict
        if verdict == "rejected":
            self.next_due, self.next_due_known = self.outbox.rejected(entry, event, counts), True
            log.warning(
                "phonehome: report %s rejected by the endpoint (%s); dropped",
                entry.sequence,
                detail,
            )
            return verdict
        self.next_due_known = False
        if self.cancel.is_set():
            # Shutting down: not the endpoint's failure. The report is due at once
            # after the next start (a late 2xx to the abandoned POST is deduplicated).
            self.outbox.release(entry)
            return "cancelled"
        failures, when = self.outbox.failed(
            entry,
            history.Event(entry.report_id, entry.sequence, entry.trigger, now, "failed", detail),
            counts,
            lambda failures: retry.not_before(now, failures, self.interval, answer.retry_after),
        )
        if failures == 1:
            log.warning(
                "phonehome: sending report %s failed (%s); will retry from %.0f s on",
                entry.sequence,
                detail,
                when - now,
            )
        return "failed"
