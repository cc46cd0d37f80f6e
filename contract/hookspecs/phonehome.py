"""The hook owned by the phonehome plugin, and the collectors it registers.

The phonehome plugin adds this module to the host's plugin manager during its
``on_startup``. A third-party MaestroHub module implements the hook in a plugin
of its own, discovered through the ``maestrohub`` entry-point group, and marks
it ``optionalhook=True`` so that it loads where phonehome is not installed::

    from hookspecs import hookimpl

    class HistorianCollector:
        name = "acme.historian"

        def collect(self):
            return {"series": 12, "backends": {"influx": 1}}

    @hookimpl(optionalhook=True)
    def phonehome_register_collectors(register):
        register(HistorianCollector())

What a collector is, is written down twice: in words, in the hook's docstring
below, and as types, :class:`Collector` and :class:`CollectorWithReceivers`, for
module authors and their type checkers. The types are a promise to the author,
not the check: the plugin treats every collector as untrusted and checks at run
time what ``register`` receives and what ``collect()`` returns, whatever its
declared type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Protocol, TypeAlias, runtime_checkable

from hookspecs.markers import hookspec

if TYPE_CHECKING:
    import blinker

SectionValue: TypeAlias = bool | int | float | str
"""One value of a collector section: a number, a boolean or a short identifier
string (at most 64 characters of letters, digits and ``_.:+-``, starting with a
letter or digit; the report schema's pattern). Other values are dropped and counted."""

Section: TypeAlias = Mapping[str, SectionValue | Mapping[str, SectionValue]]
"""What ``collect()`` returns: short keys (identifier strings, as above) to values,
or to one level of such mappings (counts by type, say). The plugin reads at most
a bounded number of entries on each level and drops what does not fit, counted."""


@runtime_checkable
class Collector(Protocol):
    """A third-party collector: the object handed to ``register``.

    A collector may also have ``receivers()``; one that does is a
    :class:`CollectorWithReceivers`. A ``Protocol`` cannot declare a member
    optional, so the optional member has a protocol of its own, and ``register``
    takes any ``Collector`` (every ``CollectorWithReceivers`` is one).

    ``isinstance(obj, Collector)`` only tells that ``name`` and ``collect`` are
    there. ``register`` checks more (that ``name`` is a ``str`` and a dotted
    lower-case name, and that ``collect`` is callable), so it can refuse an
    object that passes ``isinstance``.
    """

    @property
    def name(self) -> str:
        """Unique dotted lower-case name, such as ``acme.historian``: the key of the
        collector's section under the report's ``collectors``. A class attribute
        (``name = "acme.historian"``) is the usual way to provide it."""

    def collect(self) -> Section:
        """The collector's section (see :data:`Section`), built when a report is.

        Called on the plugin's own thread, never the host's, while the collector's
        receivers may be running on the host's: state they share needs a lock. It
        must return within half a second, the reading of what it returned included
        (the plugin reads it on the same thread, up to a bounded number of entries):
        a call that takes longer is abandoned (the report records it as a collector
        error), and the collector is not called again until that call returns. At
        shutdown, a call still running is interrupted.
        """


@runtime_checkable
class CollectorWithReceivers(Collector, Protocol):
    """A :class:`Collector` that also listens to signals of :mod:`hookspecs.signals`."""

    def receivers(self) -> Iterable[tuple[blinker.Signal, Callable[..., object]]]:
        """``(signal, receiver)`` pairs; at most 64 are read.

        The plugin connects each receiver, for the host's ``app`` as sender,
        while telemetry is on, and disconnects it when telemetry is off or
        shutting down. A receiver is called as ``receiver(app, **kwargs)`` on the
        emitting thread: it must only update counters, and accept ``**extra``
        beyond the arguments it reads. Its return value is ignored. A receiver of
        a signal of :mod:`hookspecs.signals` is called from inside the plugin's
        own receiver of that signal, after it, rather than by blinker: it is not
        among the signal's ``receivers``, and ``send()`` does not return its result.
        """


@hookspec(historic=True)
def phonehome_register_collectors(register: Callable[[Collector], None]) -> None:
    """Register the collectors this module contributes to telemetry reports.

    Historic: plugins registered after phonehome started are called on
    registration. Called only while telemetry is on, once per host start for each
    module, and for each module on its own: what one module's implementation does
    never costs another module's collectors.

    :param register: ``register(collector)`` adds one collector. A collector is
        any object with (as types: :class:`Collector`, and
        :class:`CollectorWithReceivers` for one with ``receivers()``)

        - ``name`` (required): a unique dotted name such as ``acme.historian``;
          the key of its section under the report's ``collectors``;
        - ``collect()`` (required): returns the section, a mapping of short keys
          to numbers, booleans, short identifier strings, or one level of such
          mappings (:data:`Section`). Called on the plugin's own thread when a
          report is built;
        - ``receivers()`` (optional): an iterable of ``(blinker signal,
          callable)`` pairs, connected while telemetry is on and disconnected
          when it is off or shutting down. Receivers run on the emitting thread:
          they must only update counters.

        ``register`` raises ``TypeError`` when the object lacks ``name`` or
        ``collect`` or ``name`` is not a dotted identifier, and ``ValueError``
        when the name is already registered, so that the registering module's
        own tests catch the mistake. It checks at run time whatever the
        object's declared type. Anything that goes wrong later (a raising,
        hanging or out-of-contract ``collect()`` or receiver) costs only that
        collector's section, recorded as a collector error in the report.

    An implementation that raises (a ``register`` error it did not catch, or
    anything else) loses every collector it registered in that call, and the
    plugin logs one line naming its module; the other modules' registrations are
    unaffected. A module registered after phonehome started is called inside the
    host's own ``pm.register()``: there ``register`` logs what it refuses instead of
    raising, and the implementation must not raise.
    """
