"""Third-party collectors: registration, their receivers, and calling ``collect()`` safely.

A collector's failure costs only its own section. ``collect()`` runs on a
daemon runner thread with a per-call deadline, so a hanging collector is
abandoned (and not called again until its call returns) instead of holding up
the report; a raising receiver is caught on the emitting thread and its
collector marked broken.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from phonehome_plugin import privacy

log = logging.getLogger(__name__)

NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
CALL_TIMEOUT = 0.5


def _check(collector: Any) -> str:
    name = getattr(collector, "name", None)
    if not isinstance(name, str) or not callable(getattr(collector, "collect", None)):
        raise TypeError(
            "a phonehome collector needs a str `name` and a callable `collect()`, "
            f"got {collector!r}"
        )
    if not NAME.fullmatch(name) or len(name) > privacy.IDENT_MAX:
        raise TypeError(
            f"collector name {name!r} is not a dotted lower-case name like acme.historian"
        )
    return name


class Registry:
    """Collectors registered through ``phonehome_register_collectors``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.collectors: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self._hung: dict[str, _Run] = {}  # name -> the runner whose call of it hangs
        self._connected: list[tuple[Any, Callable[..., None]]] = []
        self._sender: Any = None

    def after_fork(self) -> None:
        """Replace the lock a fork may have copied while another thread held it."""
        self._lock = threading.Lock()

    def register(self, collector: Any) -> None:
        """The ``register`` callable handed to the hook; raises TypeError/ValueError on misuse."""
        name = _check(collector)
        with self._lock:
            if name in self.collectors:
                raise ValueError(f"a phonehome collector named {name!r} is already registered")
            self.collectors[name] = collector
            sender = self._sender
        if sender is not None:
            self._connect_one(name, collector, sender)

    def connect(self, sender: Any) -> None:
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

    def _connect_one(self, name: str, collector: Any, sender: Any) -> None:
        try:
            pairs = list(_receiver_pairs(collector))
        except Exception as error:  # a third party's bug must not reach the host
            self._fail(name, f"receivers() failed: {type(error).__name__}")
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
                self._fail(name, f"receiver raised {type(error).__name__}")

        return guarded

    def _fail(self, name: str, message: str) -> None:
        if name not in self.errors:
            log.warning("phonehome: collector %s: %s; its section is left out", name, message)
        self.errors[name] = message

    def collect_all(self, drops: privacy.DropCounter) -> tuple[dict[str, Any], dict[str, str]]:
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
        sections: dict[str, Any] = {}
        for name, outcome in _run(todo, self._hung):
            if isinstance(outcome, BaseException):
                errors[name] = _describe(outcome)
                continue
            try:
                sections[name] = privacy.section(outcome, drops)
            except Exception as error:  # e.g. a live dict changed while it was read
                errors[name] = _unreadable(outcome, error)
        return sections, errors


def _receiver_pairs(collector: Any) -> Iterable[tuple[Any, Callable[..., None]]]:
    receivers = getattr(collector, "receivers", None)
    if receivers is None:
        return ()
    pairs = []
    for signal, receiver in receivers():
        if not callable(getattr(signal, "connect", None)) or not callable(receiver):
            raise TypeError("receivers() must yield (blinker signal, callable) pairs")
        pairs.append((signal, receiver))
    return pairs


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return f"collect() took longer than {CALL_TIMEOUT} s"
    return f"collect() raised {type(error).__name__}"


def _unreadable(outcome: Any, error: Exception) -> str:
    # Never the exception's text: a third party's message may hold anything.
    if not isinstance(outcome, Mapping):
        return f"collect() returned {type(outcome).__name__}, not a mapping"
    return f"reading collect()'s result raised {type(error).__name__}"


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


def _run(todo: list[tuple[str, Any]], hung: dict[str, _Run]) -> Iterable[tuple[str, Any]]:
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
    todo: list[tuple[str, Any]],
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
