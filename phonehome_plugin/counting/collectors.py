"""Third-party collectors: registration, their receivers, and calling ``collect()`` safely.

Modules are isolated from each other: what one module's code does costs that module's
collectors only, never another module's, the report or the host.

Registration. :meth:`Registry.ask` calls each module's ``phonehome_register_collectors``
on its own, with a ``register`` of that module's: a module whose hook raises loses the
collectors it registered in that call (they are withdrawn, shown under
``diagnostics.collector_errors``), and one log line names it; the modules before and
after it register as if it were not there. Within that call ``register`` raises
``TypeError``/``ValueError`` at once, in the module's own code, for an object that is
no collector or a name already taken, so that the module's tests see the mistake
(:attr:`Registry.refused` keeps it for the testing kit, which raises it in the test).
A module registered later (pluggy calls it on registration, the hook being historic)
gets a ``register`` that never raises: that call runs inside the host's own
``pm.register()``, so a refused collector is logged, naming the calling module, and
left out.

``collect()``. It runs on a daemon runner thread with a per-call deadline, so a
hanging collector is abandoned (and not called again until its call returns) instead
of holding up the report. What it returned is read on the same thread, within the same
deadline (:func:`_snapshot`), into a copy made of built-in values only: the worker's
thread, which then applies the privacy guard to the copy, never runs a line of the
collector's code. Reading stops as soon as the deadline has passed (the runner checks
at every entry) and after :data:`privacy.KEYS_MAX` entries of each level, so an endless
or huge mapping costs its own section and a bounded amount of time and memory.

Receivers. A collector's receiver of a signal the plugin listens to itself (every
signal of the contract) rides in the plugin's own receiver of it (:mod:`.riders`);
one of any other signal is connected to it, inside a guard of one frame. Either
way a raising receiver is caught on the emitting thread and its collector marked
broken.

Shutdown. :meth:`Registry.disconnect` disconnects every receiver and starts no runner
afterwards. A runner still inside a collector's code (an endless loop, a call that
never returns) is asked to stop: an exception is raised in it at its next Python
instruction (CPython's ``PyThreadState_SetAsyncExc``; a call blocked in C stops as
soon as that call returns). Every runner is a daemon thread, so none keeps the process
alive meanwhile.

Bounded work on what a third party hands over. A collector object, its name and its
exceptions are quoted only as :mod:`.bounded` describes them (type and at most a short
prefix, never their ``repr``/``str``), so every error message here is one line of at
most a few hundred characters, and a collector error stays within the report's
200-character limit (:data:`ERROR_MAX`). ``receivers()`` is read up to
:data:`RECEIVERS_MAX` pairs: one that yields more (or never ends) fails its collector
instead of holding up the host's startup.

Types and checks. :meth:`Registry.register` is annotated with the contract's
:class:`hookspecs.Collector`, for module authors and their type checkers; it still
takes any object at run time and checks its shape itself (:func:`_check`,
:func:`_receiver_pairs`), as it must with code it did not write. Inside, a registered
collector is therefore only trusted as far as those checks went.
"""

from __future__ import annotations

import itertools
import logging
import queue
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from hookspecs import Collector
from phonehome_plugin.counting.riders import Builtin, Failed, Rider, Riders
from phonehome_plugin.guard import privacy
from phonehome_plugin.guard.bounded import describe, label, type_name

if TYPE_CHECKING:
    import pluggy

log = logging.getLogger(__name__)

NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
CALL_TIMEOUT = 0.5
"""Seconds one ``collect()`` and the reading of its result may take together."""
ERROR_MAX = 200
"""Characters of a collector error at most (the report schema's maxLength)."""
RECEIVERS_MAX = 64
"""``(signal, receiver)`` pairs one collector may connect (the contract has 13 signals)."""
REFUSED_MAX = 16
"""Registration errors :attr:`Registry.refused` keeps (the first ones)."""
HOOK = "phonehome_register_collectors"


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
        self.refused: list[tuple[str, Exception]] = []
        """``(module, error)`` for each registration refused or raised, the first
        :data:`REFUSED_MAX`: what the testing kit raises in a module author's test."""
        self._withdrawn: dict[str, str] = {}  # name -> why its module's registration failed
        self._hung: dict[str, _Run] = {}  # name -> the runner whose call of it hangs
        self._connected: list[tuple[Any, Callable[..., None]]] = []
        self._builtins: dict[int, Builtin] = {}  # id(signal) -> the plugin's own receiver
        self._riders: dict[int, Riders] = {}  # id(signal) -> the riders on its board
        self._sender: object = None
        self._closed = False

    def after_fork(self) -> None:
        """Replace the lock a fork may have copied while another thread held it."""
        self._lock = threading.Lock()

    def register(self, collector: Collector) -> None:
        """Add one collector now; raises TypeError/ValueError on misuse.

        ``collector`` is typed for the caller; the checks here do not rely on it.
        """
        name = _check(collector)
        with self._lock:
            if name in self.collectors:
                raise ValueError(
                    f"a phonehome collector named {describe(name)} is already registered"
                )
            self.collectors[name] = collector
            self._withdrawn.pop(name, None)
            sender = self._sender
        if sender is not None:
            self._connect_one(name, collector, sender)

    # Asking the modules ------------------------------------------------------------------

    def ask(self, pm: pluggy.PluginManager) -> None:
        """Call every module's ``phonehome_register_collectors``, each on its own, and
        have pluggy call the modules registered later (the hook is historic) with
        :meth:`_register_late`. Never raises; see the module docs.

        The later calls are recorded first, through a subset of the hook that leaves
        out the modules there now, so that a module registering another module from
        its hook gets that one called too. The modules there now are called here,
        one by one, each through its implementation's own function: pluggy's call of
        a hook would stop at the first implementation that raises.
        """
        hook = getattr(pm.hook, HOOK)
        present = hook.get_hookimpls()
        later = pm.subset_hook_caller(HOOK, remove_plugins=[i.plugin for i in present])
        # A subset leaves out the plugins that have an attribute named like the hook;
        # one implementing it under another name (specname=) stays in, and is called
        # by the historic call right now, with the register that never raises.
        now = later.get_hookimpls()
        try:
            later.call_historic(kwargs={"register": self._register_late})
        except Exception as error:  # one of those raised: the rest of them are its cost
            self._refuse(_module_of_impl(now[0]) if now else "?", error, [])
        for impl in present:
            if impl not in now:
                self._ask_one(impl)

    def _ask_one(self, impl: pluggy.HookImpl) -> None:
        module = _module_of_impl(impl)
        staged: list[tuple[str, Collector]] = []
        refused: list[Exception] = []

        def register(collector: Collector) -> None:
            try:
                name = _check(collector)
                with self._lock:
                    taken = name in self.collectors or any(n == name for n, _ in staged)
                if taken:
                    raise ValueError(
                        f"a phonehome collector named {describe(name)} is already registered"
                    )
            except Exception as error:
                refused.append(error)
                raise
            staged.append((name, collector))

        try:
            # pluggy checked at registration that every argument is one of the spec's.
            args = {"register": register}
            impl.function(*[args[name] for name in impl.argnames])
        except Exception as error:  # the module's bug: it costs its own collectors
            for earlier in refused:
                self._note_refused(module, earlier)
            self._refuse(module, error, [name for name, _ in staged])
            return
        # The module caught what register() raised, and went on: one line for each.
        for caught in refused:
            self._note_refused(module, caught)
            self._log_refused(module, caught)
        for _, collector in staged:
            try:
                self.register(collector)
            except ValueError as taken:  # meanwhile, by a module from another thread
                self._note_refused(module, taken)
                self._log_refused(module, taken)

    def _register_late(self, collector: Collector) -> None:
        """``register`` for a module registered after startup: logs instead of raising."""
        try:
            self.register(collector)
        except Exception as error:
            # The calling module, by its code's module name: pluggy does not say which
            # plugin it is calling, and the error must not reach the host's pm.register().
            module = _calling_module()
            self._note_refused(module, error)
            self._log_refused(module, error)

    def _log_refused(self, module: str, error: Exception) -> None:
        log.warning(
            "phonehome: module %s: a collector was refused: %s %s; it is left out",
            module,
            type_name(error),
            _said(error),
        )

    def _note_refused(self, module: str, error: Exception) -> None:
        with self._lock:
            if len(self.refused) < REFUSED_MAX and all(e is not error for _, e in self.refused):
                self.refused.append((module, error))

    def _refuse(self, module: str, error: Exception, withdrawn: list[str]) -> None:
        self._note_refused(module, error)
        why = f"its module's registration raised {type_name(error)}"
        with self._lock:
            for name in withdrawn:
                self._withdrawn[name] = why
        log.warning(
            "phonehome: module %s failed to register its collectors: %s %s; "
            "its collectors are left out",
            module,
            type_name(error),
            _said(error),
        )

    # Receivers ---------------------------------------------------------------------------

    def connect(self, sender: object, builtins: Iterable[Builtin] = ()) -> None:
        """Connect every collector's receivers (and those of collectors registered
        later): riding in ``builtins`` (the plugin's own receivers, connected for
        ``sender``) for their signals, each connected for ``sender`` otherwise."""
        with self._lock:
            self._sender = sender
            self._builtins = {id(own.signal): own for own in builtins}
            current = list(self.collectors.items())
        for name, collector in current:
            self._connect_one(name, collector, sender)

    def disconnect(self) -> None:
        """At shutdown: disconnect every receiver, call no collector any more, and stop
        the runners still inside a collector's code (see the module docs)."""
        with self._lock:
            pairs, self._connected, self._sender = self._connected, [], None
            boards = [self._builtins[key].board for key in self._riders]
            self._riders, self._builtins = {}, {}
            self._closed = True
            for board in boards:
                board(())
        for signal, receiver in pairs:
            signal.disconnect(receiver)  # from every sender: see receivers.disconnect_all
        for run in list(self._hung.values()):
            run.stop()

    def _connect_one(self, name: str, collector: Collector, sender: object) -> None:
        try:
            pairs = list(_receiver_pairs(collector))
        except Exception as error:  # a third party's bug must not reach the host
            self._fail(name, f"receivers() failed: {type_name(error)}")
            return
        for signal, receiver in pairs:
            failed = self._failure(name)
            if not self._board(signal, (receiver, failed)):
                self._connect_guarded(signal, _guard(receiver, failed), sender)

    def _board(self, signal: object, rider: Rider) -> bool:
        """Put ``rider`` on the board of the plugin's receiver of ``signal``, if there
        is one (and the registry is still connected); tells whether it did."""
        with self._lock:
            own = self._builtins.get(id(signal))
            if own is None or own.signal is not signal:  # identity only: no third-party __eq__
                return False
            riders = (*self._riders.get(id(signal), ()), rider)
            self._riders[id(signal)] = riders
            own.board(riders)  # one assignment: a send sees the old riders or these
        return True

    def _connect_guarded(self, signal: Any, guarded: Callable[..., None], sender: object) -> None:
        signal.connect(guarded, sender=sender, weak=False)
        with self._lock:
            if self._sender is sender:
                self._connected.append((signal, guarded))
                return
        signal.disconnect(guarded)  # disconnect() ran meanwhile: it missed this one

    def _failure(self, name: str) -> Failed:
        """What marks collector ``name`` broken when one of its receivers raised."""

        def failed(error: Exception) -> None:
            self._fail(name, f"receiver raised {type_name(error)}")

        return failed

    def _fail(self, name: str, message: str) -> None:
        if name not in self.errors:
            log.warning("phonehome: collector %s: %s; its section is left out", name, message)
        self.errors[name] = message

    # Sections ----------------------------------------------------------------------------

    def collect_all(
        self, drops: privacy.DropCounter, wanted: Callable[[str], bool] = lambda name: True
    ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """Sections of every healthy collector, and an error per collector that failed.

        A collector whose receivers failed is left out (its counts missed what
        the failing receiver dropped), and is not called; nor is one whose name
        ``wanted`` refuses (the operator switched its section off): its code does
        not run for a section that would not be sent.
        """
        hung = set(self._hung)  # one atomic copy; runner threads update the dict
        broken = dict(self.errors)
        with self._lock:
            todo = [
                (n, c)
                for n, c in self.collectors.items()
                if n not in hung and n not in broken and wanted(n)
            ]
            errors = dict(self._withdrawn)
            closed = self._closed
        errors.update({n: "collect() still running from an earlier report" for n in hung})
        errors.update(broken)
        if closed:  # shutting down: no runner may start now
            errors.update({n: "phonehome was shutting down" for n, _ in todo})
            todo = []
        sections: dict[str, dict[str, Any]] = {}
        for name, outcome in _run(todo, self._hung, lambda: self._closed):
            if isinstance(outcome, BaseException):
                errors[name] = _describe(outcome)
            elif isinstance(outcome, _Snapshot):
                # Built-in values only: nothing of the collector's code runs here.
                sections[name] = privacy.section(outcome.section, drops)
                if outcome.unseen:
                    drops.add("collector_key", outcome.unseen)
            else:
                errors[name] = str(outcome)
        return sections, errors


def _guard(receiver: Callable[..., None], failed: Failed) -> Callable[..., None]:
    """``receiver`` for a signal the plugin has no receiver of: connected on its own."""

    # One frame, forwarding what blinker passed as it came: ``*args`` costs about
    # 470 instructions a send less than naming ``sender`` (callgrind, CPython 3.11).
    def guarded(*args: Any, **kwargs: Any) -> None:
        try:
            receiver(*args, **kwargs)
        except Exception as error:  # runs on the host's thread: never let it out
            failed(error)

    return guarded


def _said(error: BaseException) -> str:
    """The first argument of ``error``, quoted in bounded time and size (its text may be
    huge, slow or secret; the plugin's own messages are short and say what failed)."""
    args = error.args if isinstance(error.args, tuple) else ()
    return describe(args[0]) if args else ""


def _module_of_impl(impl: pluggy.HookImpl) -> str:
    """The module an implementation belongs to, for a log line: its plugin's name with
    the host (the entry point's name), and the Python module when that says more."""
    plugin_name = impl.plugin_name
    code_module = getattr(impl.function, "__module__", None)
    if not isinstance(plugin_name, str) or plugin_name.isdigit():  # pluggy's id() default
        return label(code_module)
    if isinstance(code_module, str) and code_module != plugin_name:
        return f"{label(plugin_name)} ({label(code_module)})"
    return label(plugin_name)


def _calling_module() -> str:
    """The module whose code called :meth:`Registry._register_late` (two frames up)."""
    try:
        return label(sys._getframe(2).f_globals.get("__name__"))
    except (ValueError, AttributeError):  # no such frame, or no frames at all (not CPython)
        return "?"


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


# Reading what collect() returned ---------------------------------------------------------


class _Snapshot:
    """``collect()``'s result as built-in values only, and the entries left unread."""

    __slots__ = ("section", "unseen")

    def __init__(self, section: dict[Any, Any], unseen: int) -> None:
        self.section = section
        self.unseen = unseen


class _OverrunError(Exception):
    """The deadline passed while a result was being read."""


def _snapshot(raw: object, cancelled: Callable[[], bool]) -> _Snapshot | str:
    """A copy of ``raw`` (``collect()``'s result) that the privacy guard can read without
    running the collector's code, or the reason there is none.

    Keys and values keep what :func:`.privacy.section` decides on, nothing more: a
    ``str`` key of at most :data:`privacy.IDENT_MAX` characters as a plain ``str``, any
    other key as an object of its own (the guard drops and counts each); numbers,
    booleans and short strings as plain ``bool``/``int``/``float``/``str``; a mapping on
    the first level as a copy of its own, one on the second as ``None`` (dropped and
    counted, as the guard drops it). At most :data:`privacy.KEYS_MAX` entries of each
    level are read; the rest are counted unseen, from the mapping's length. A ``dict``
    (or a subclass) is read through ``dict``'s own C slots; any other mapping through
    its methods, on this runner thread, which stops at the next entry once
    ``cancelled()`` (the caller gave up waiting).
    """
    if not isinstance(raw, Mapping):
        return f"collect() returned {type_name(raw)}, not a mapping"
    unseen = [0]
    try:
        section = _copy_level(raw, cancelled, unseen, nested_ok=True)
    except _OverrunError:
        return f"reading collect()'s result took longer than {CALL_TIMEOUT} s"
    except Exception as error:  # e.g. a live dict changed while it was read
        # Never the exception's text: a third party's message may hold anything.
        return f"reading collect()'s result raised {type_name(error)}"
    return _Snapshot(section, unseen[0])


def _copy_level(
    raw: Mapping[Any, Any], cancelled: Callable[[], bool], unseen: list[int], nested_ok: bool
) -> dict[Any, Any]:
    entries: Iterable[tuple[Any, Any]]
    if isinstance(raw, dict):
        # dict's own C slots: a subclass's items() or __len__ would be third-party code.
        entries, size = dict.items(raw), dict.__len__(raw)
    else:
        entries, size = raw.items(), -1  # its len() only once read, under the deadline
    out: dict[Any, Any] = {}
    seen = 0
    limit = privacy.IDENT_MAX
    for key, value in itertools.islice(entries, privacy.KEYS_MAX):
        if cancelled():
            raise _OverrunError
        seen += 1
        kind = type(value)
        # The built-in types first, read as they are (no subclass has methods to run);
        # the Mapping ABC's isinstance, and _plain's slots, for the rest.
        copy: Any
        if kind is int:
            copy = value if value.bit_length() < 64 else None
        elif kind is str:
            copy = value if len(value) <= limit else None
        elif kind is bool or kind is float:
            copy = value
        elif kind is dict or isinstance(value, Mapping):
            copy = _copy_level(value, cancelled, unseen, nested_ok=False) if nested_ok else None
        else:
            copy = _plain(value)
        out[key if type(key) is str and len(key) <= limit else _plain_key(key)] = copy
    if cancelled():
        raise _OverrunError
    if size < 0:
        size = len(raw)
    unseen[0] += max(size - seen, 0)  # a length may disagree with what was yielded
    return out


def _plain_key(key: object) -> object:
    if isinstance(key, str) and str.__len__(key) <= privacy.IDENT_MAX:
        return str.__str__(key)
    return object()  # one of its own: the guard drops it, and counts it once


def _plain(value: object) -> bool | int | float | str | None:
    """``value`` as the built-in the guard would see, read through the built-in type's
    own slots (a subclass's methods are third-party code), or None (dropped, counted)."""
    if type(value) is bool:  # bool cannot be subclassed
        return value
    if isinstance(value, int):
        # Past 63 bits the guard drops it: do not copy a number of a million digits.
        return int.__index__(value) if int.bit_length(value) < 64 else None
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str) and str.__len__(value) <= privacy.IDENT_MAX:
        return str.__str__(value)
    return None


# Runner threads --------------------------------------------------------------------------


class _Abandoned(BaseException):
    """Raised in a runner still inside a collector's code at shutdown (see the module
    docs). A BaseException, so that the collector's own ``except Exception`` lets it by."""


def _interrupt(thread: threading.Thread) -> None:
    """Raise :class:`_Abandoned` in ``thread`` at its next Python instruction.

    CPython only; elsewhere the runner stays until its call returns (a daemon thread).
    ctypes is imported here, on the host's thread at shutdown, and only when a
    collector hangs: what every other host start never pays for.
    """
    try:
        import ctypes

        raise_in = ctypes.pythonapi.PyThreadState_SetAsyncExc
    except (ImportError, AttributeError):
        return
    ident = thread.ident
    if ident is not None and thread.is_alive():  # an ended thread's id may be reused
        raise_in(ctypes.c_ulong(ident), ctypes.py_object(_Abandoned))


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
        self.thread: threading.Thread | None = None
        self.inside = False
        """True while the runner runs a collector's code (``collect()``, or a method of
        the mapping it returned), the only time :meth:`stop` may interrupt it."""

    def stop(self) -> None:
        """At shutdown: no more calls, and an interruption if inside a collector's code."""
        self.cancelled = True
        if self.inside and self.thread is not None:
            _interrupt(self.thread)


def _run(
    todo: list[tuple[str, Collector]], hung: dict[str, _Run], closed: Callable[[], bool]
) -> Iterable[tuple[str, Any]]:
    """Call each ``collect()`` on a runner thread, abandoning one that overruns.

    After an overrun the rest go to a fresh runner; the abandoned one stops
    after the hung call returns, and only then is that collector called again.
    A result that lands just after the deadline does not mark its collector
    hung, since its call has returned; only the runner that owns a hung call
    clears it. Once ``closed()`` (shutdown) no runner starts, and one that overruns
    is stopped (:meth:`_Run.stop`).
    """
    while todo and not closed():
        # SimpleQueue: its get() with a timeout is one C call; Queue's is a Python
        # Condition (about 1 us a collector more on the worker: 2.25 -> 1.73 ms at 500).
        results: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        run = _Run()
        thread = threading.Thread(
            target=_runner,
            args=(todo, results, run, hung),
            daemon=True,
            name="phonehome-collect",
        )
        run.thread = thread
        thread.start()
        done = 0
        for name, _ in todo:
            try:
                yield results.get(timeout=CALL_TIMEOUT)
            except queue.Empty:
                run.cancelled = True
                hung[name] = run
                if name in run.finished:  # its result landed just after the deadline
                    _clear(hung, name, run)
                if closed():  # shutdown came while it ran: it must not outlive it
                    run.stop()
                yield name, TimeoutError()
                break
            done += 1
        todo = todo[done + 1 :] if done < len(todo) else []


def _runner(
    todo: list[tuple[str, Collector]],
    results: queue.SimpleQueue[tuple[str, Any]],
    run: _Run,
    hung: dict[str, _Run],
) -> None:
    try:
        for name, collector in todo:
            if run.cancelled:
                return
            run.inside = True
            try:
                outcome: Any = _snapshot(collector.collect(), lambda: run.cancelled)
            except _Abandoned:
                raise
            except BaseException as error:  # SystemExit too: it must not end the runner unseen
                outcome = error
            finally:
                run.inside = False
            run.finished.add(name)
            if run.cancelled:
                _clear(hung, name, run)
                return
            results.put((name, outcome))
    except _Abandoned:  # shutdown stopped it inside a collector's code: nothing to tell
        return


def _clear(hung: dict[str, _Run], name: str, run: _Run) -> None:
    """Clear ``name``'s hung mark if ``run`` set it (a later run may own it now)."""
    if hung.get(name) is run:
        hung.pop(name, None)
