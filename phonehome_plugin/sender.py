"""Delivering the outbox: each due report goes through one send series.

A 2xx removes the report and records it in the history; a final answer removes
it as a counted loss; anything else leaves it in the outbox with a not-before
time and stops this round, since the endpoint is evidently unwell.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from phonehome_plugin import history, retry
from phonehome_plugin.outbox import Entry, Outbox
from phonehome_plugin.transport import Transport

log = logging.getLogger(__name__)

FAILURES_KEY = "delivery.consecutive_failures"


@dataclass
class Sender:
    """Sends due outbox entries through ``transport``; used by the worker thread only."""

    outbox: Outbox
    transport: Transport
    policy: retry.Policy
    interval: float
    cancel: threading.Event

    def deliver_due(self, now: float) -> int:
        """Try every report due at ``now`` (host clock); returns how many were delivered."""
        delivered = 0
        for entry in self.outbox.due(now):
            if self.cancel.is_set():
                break
            if not self._deliver(entry, now):
                break
            delivered += 1
        return delivered

    def _deliver(self, entry: Entry, now: float) -> bool:
        def post(time_left: float) -> retry.Answer:
            return self.transport.post(entry.body, entry.report_id, time_left, self.cancel)

        outcome = retry.send_series(post, self.policy, self.cancel)
        store = self.outbox.store
        if outcome.attempts > 1:
            store.add({"delivery.retried": outcome.attempts - 1})
        verdict = retry.verdict(outcome.answer)
        detail = outcome.answer.describe()
        if verdict == "retry":
            return self._defer(entry, now, outcome.answer, detail)
        self.outbox.remove(entry.report_id)
        store.set(FAILURES_KEY, "0")
        if verdict == "rejected":
            store.add({"delivery.dropped": 1, "delivery.rejected": 1})
            log.warning("phonehome: report %s rejected by the endpoint (%s); dropped", entry.sequence, detail)
        _record(self.outbox, entry, now, verdict, detail)
        return True

    def _defer(self, entry: Entry, now: float, answer: retry.Answer, detail: str) -> bool:
        store = self.outbox.store
        failures = int(store.get(FAILURES_KEY) or 0) + 1
        store.set(FAILURES_KEY, str(failures))
        store.add({"delivery.failed": 1})
        when = retry.not_before(now, failures, self.interval, answer.retry_after)
        self.outbox.defer(entry.report_id, when)
        if failures == 1:
            log.warning("phonehome: sending report %s failed (%s); will retry", entry.sequence, detail)
        _record(self.outbox, entry, now, "failed", detail)
        return False


def _record(outbox: Outbox, entry: Entry, now: float, result: str, detail: str) -> None:
    event = history.Event(entry.report_id, entry.sequence, entry.trigger, now, result, detail)
    history.record(outbox.store, event)
