"""Third-party collectors: registration, their receivers, and calling ``collect()`` safely.

A collector's failure costs only its own section. ``collect()`` runs on a
daemon runner thread with a per-call deadline, so a hanging collector is
abandoned (and not called again until its call returns) instead of holding up
the report; a raising receiver is caught on the emitting thread and its
collector marked broken.

Bounded work on what a third party hands over. A collector object, its name and
its exceptions are quoted only as :mod:`.bounded` describes them (type and at
most a short prefix, never their ``repr``/``str``), so every error message here
is one line of at most a few hundred characters, and a collector error stays
within the report's 200-character limit (:data:`ERROR_MAX`). A section is read
by :func:`.privacy.section`: at most ``KEYS_MAX`` entries on each of its two
levels, whatever ``collect()`` returned (a huge or self-referencing mapping).
``receivers()`` is read up to :data:`RECEIVERS_MAX` pairs: one that yields more
(or never ends) fails its collector instead of holding up the host's startup.

Types and checks. :meth:`Registry.register` is annotated with the contract's
:class:`hookspecs.Collector`, for module authors and their type checkers; it
still takes any object at run time and checks its shape itself (:func:`_check`,
:func:`_receiver_pairs`), as it must with code it did not write. Inside, a
registered collector is therefore only trusted as far as those checks went.
"""

from __future__ import annotations

import itertools
import logging
import queue
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hookspecs import Collector
from phonehome_plugin.guard import privacy
from phonehome_plugin.guard.bounded import describe, type_name

log = logging.getLogger(__name__)

NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
CALL_TIMEOUT = 0.5
ERROR_MAX = 200
"""Characters of a collector error at most (the report schema's maxLength)."""
RECEIVERS_MAX = 64
"""``(signal, receiver)`` pairs one collector may connect (the contract has 13 signals)."""


def _check(collector: object) -> str:
    name = getattr(collector, "name", None)
    if not isinstance(name, str) or not callable(getattr(collector, "collect", None)):
        raise TypeError(
            "a phonehome collector needs a str `name` and a callable `collect()`, "
            f"got {describe(collector)}"
        )
    # A plain copy of a str subclass's text: its own len, hash or eq are third-party code.
    name = str.__str__(name)
    # The length first: it bounds the match (and the name is then short to quote).
    if len(name) > privacy.IDENT_MAX or not NAME.fullmatch(name):
        raise TypeError(
            f"collector name {describe(name)} is not a dotted lower-case name like acme.historian"
        )
    return name


class Registry:
    """Collectors registered through ``phonehome_register_collectors``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.collectors: dict[str, Collector] = {}
        self.errors: dict[str, str] = {}
        self._hung: dict[str, _Run] = {}  # name -> the runner whose call of it hangs
        self._connected: list[tuple[Any, Callable[..., None]]] = []
        self._sender: object = None

    def after_fork(self) -> None:
        """Replace the lock a fork may have copied while another thread held it."""
        self._lock = threading.Lock()

    def register(self, collector: Collector) -> None:
        """The ``register`` callable handed to the hook; raises TypeError/ValueError on misuse.

        ``collector`` is typed for the caller; the checks here do not rely on it.
        """
        name = _check(collector)
        with self._lock:
            if name in self.collectors:
                raise ValueError(
                    f"a phonehome collector named {describe(name)} is already registered"
                )
            self.collectors[name] = collector
            sender = self._sender
        if sender is not None:
            self._connect_one(name, collector, sender)

    def connect(self, sender: object) -> None:
        """Connect every collector's receivers (and those of collectors registered later)."""
        with self._lock:
            self._sender = sender
            current = list(self.collectors.items())
        for name, collector in current:
            self._connect_one(name, collector, sender)

    def disconnect(self) -> None:
        with self._lock:
            pairs, self._connected, self._sender = self._connected, [], None
        for signal, receiver in pairs:
            signal.disconnect(receiver)  # from every sender: see receivers.disconnect_all

    def _connect_one(self, name: str, collector: Collector, sender: object) -> None:
        try:
            pairs = list(_receiver_pairs(collector))
        except Exception as error:  # a third party's bug must not reach the host
            self._fail(name, f"receivers() failed: {type_name(error)}")
            return
        for signal, receiver in pairs:
            guarded = self._guard(name, receiver)
            signal.connect(guarded, sender=sender, weak=False)
            with self._lock:
                self._connected.append((signal, guarded))

    def _guard(self, name: str, receiver: Callable[..., None]) -> Callable[..., None]:
        def guarded(sender: Any, **kwargs: Any) -> None:
            try:
                receiver(sender, **kwargs)
            except Exception as error:  # runs on the host's thread: never let it out
                self._fail(name, f"receiver raised {type_name(error)}")

        return guarded

    def _fail(self, name: str, message: str) -> None:
        if name not in self.errors:
            log.warning("phonehome: collector %s: %s; its section is left out", name, message)
        self.errors[name] = message

    def collect_all(
        self, drops: privacy.DropCounter
    ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """Sections of every healthy collector, and an error per collector that failed.

        A collector whose receivers failed is left out (its counts missed what
        the failing receiver dropped), and is not called.
        """
        hung = set(self._hung)  # one atomic copy; runner threads update the dict
        broken = dict(self.errors)
        with self._lock:
            todo = [
                (n, c) for n, c in self.collectors.items() if n not in hung and n not in broken
            ]
        errors = {n: "collect() still running from an earlier report" for n in hung}
        errors.update(broken)
        sections: dict[str, dict[str, Any]] = {}
        for name, outcome in _run(todo, self._hung):
            if isinstance(outcome, BaseException):
                errors[name] = _describe(outcome)
                continue
            try:
                sections[name] = privacy.section(outcome, drops)
            except Exception as error:  # e.g. a live dict changed while it was read
                errors[name] = _unreadable(outcome, error)
        return sections, errors


def _receiver_pairs(collector: object) -> Iterable[tuple[Any, Callable[..., None]]]:
    receivers = getattr(collector, "receivers", None)
    if receivers is None:
        return ()
    pairs = []
    # One more than allowed is read, to tell "too many" (or endless) from "exactly enough".
    for signal, receiver in itertools.islice(receivers(), RECEIVERS_MAX + 1):
        if not callable(getattr(signal, "connect", None)) or not callable(receiver):
            raise TypeError("receivers() must yield (blinker signal, callable) pairs")
        pairs.append((signal, receiver))
    if len(pairs) > RECEIVERS_MAX:
        raise ValueError(f"receivers() yielded more than {RECEIVERS_MAX} pairs")
    return pairs


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return f"collect() took longer than {CALL_TIMEOUT} s"
    return f"collect() raised {type_name(error)}"


def _unreadable(outcome: Any, error: Exception) -> str:
    # Never the exception's text: a third party's message may hold anything.
    if not isinstance(outcome, Mapping):
        return f"collect() returned {type_name(outcome)}, not a mapping"
    return f"reading collect()'s result raised {type_name(error)}"


class _Run:
    """One runner thread's progress, shared with the thread that waits for it.

    No lock: runner threads do not survive a fork, and a lock one of them held
    at the fork would stay held in the child. Each step below is one atomic
    operation under the GIL, and the order of the steps makes every
    interleaving clear a hung mark once its call has returned.
    """

    def __init__(self) -> None:
        self.cancelled = False
        self.finished: set[str] = set()


def _run(todo: list[tuple[str, Collector]], hung: dict[str, _Run]) -> Iterable[tuple[str, Any]]:
    """Call each ``collect()`` on a runner thread, abandoning one that overruns.

    After an overrun the rest go to a fresh runner; the abandoned one stops
    after the hung call returns, and only then is that collector called again.
    A result that lands just after the deadline does not mark its collector
    hung, since its call has returned; only the runner that owns a hung call
    clears it.
    """
    while todo:
        results: queue.Queue[tuple[str, Any]] = queue.Queue()
        run = _Run()
        threading.Thread(
            target=_runner,
            args=(todo, results, run, hung),
            daemon=True,
            name="phonehome-collect",
        ).start()
        done = 0
        for name, _ in todo:
            try:
                yield results.get(timeout=CALL_TIMEOUT)
            except queue.Empty:
                run.cancelled = True
                hung[name] = run
                if name in run.finished:  # its result landed just after the deadline
                    _clear(hung, name, run)
                yield name, TimeoutError()
                break
            done += 1
        todo = todo[done + 1 :] if done < len(todo) else []


def _runner(
    todo: list[tuple[str, Collector]],
    results: queue.Queue[tuple[str, Any]],
    run: _Run,
    hung: dict[str, _Run],
) -> None:
    for name, collector in todo:
        if run.cancelled:
            return
        try:
            outcome: Any = collector.collect()
        except BaseException as error:  # SystemExit too: it must not end the runner unseen
            outcome = error
        run.finished.add(name)
        if run.cancelled:
            _clear(hung, name, run)
            return
        results.put((name, outcome))


def _clear(hung: dict[str, _Run], name: str, run: _Run) -> None:
    """Clear ``name``'s hung mark if ``run`` set it (a later run may own it now)."""
    if hung.get(name) is run:
        hung.pop(name, None)
