"""Host hooks (section 2 of the contract) and the ``app`` protocol (section 3).

The host adds this module with ``pm.add_hookspecs(hookspecs.host)``, loads the
``maestrohub`` entry points, and then calls, in this order: ``on_startup``
(historic), ``on_tick`` every few seconds and ``on_user_created`` as users are
created, and ``on_shutdown`` once before the process exits.

Rules for every implementation of these hooks: it must not raise into the
host, must not block on the network or sleep, and must return within a
millisecond in the common case. Work that takes longer belongs on a thread of
the plugin's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from hookspecs.markers import hookspec

if TYPE_CHECKING:
    import pluggy


@runtime_checkable
class App(Protocol):
    """What a plugin may rely on in the host object passed to every hook.

    Plugins read these attributes; they never assign to them.
    """

    @property
    def version(self) -> str:
        """MaestroHub version, e.g. ``"2.3.0"``."""

    @property
    def edition(self) -> str:
        """``core``, ``foundation`` or ``enterprise``."""

    @property
    def config(self) -> Mapping[str, Any]:
        """The parsed ``config.yaml``; plugin sections live under ``modules``."""

    @property
    def config_path(self) -> Path | None:
        """Where ``config`` was read from, or ``None`` when it came from elsewhere."""

    @property
    def data_dir(self) -> Path:
        """A directory for module state. It may be read-only or missing in
        locked-down installs; a plugin must survive that."""

    @property
    def started_at(self) -> datetime:
        """Aware UTC time this host start began. Every worker process of one
        start sees the same value, so it names the start across processes."""

    @property
    def plugin_manager(self) -> pluggy.PluginManager:
        """The host's plugin manager. A plugin that owns hooks adds its specs here."""


@hookspec(historic=True)
def on_startup(app: App) -> None:
    """The host has loaded its plugins and is starting.

    Historic: a plugin registered after the call is called on registration,
    so a late plugin still starts. Module state is not known yet: every module
    emits ``inventory-synced`` after this hook, and the first ``on_tick`` comes
    only after every module has synced.

    :param app: the host object; see :class:`App`.

    An implementation may connect signal receivers, add hook specifications to
    ``app.plugin_manager`` and start threads of its own. It must not do network
    I/O or slow disk I/O here, and must not raise.
    """


@hookspec
def on_user_created(app: App, user: Mapping[str, Any]) -> None:
    """A user was created and committed.

    :param app: the host object; see :class:`App`.
    :param user: the new user: a mapping with at least ``id``, ``email`` and
        ``created_at`` (an aware UTC ``datetime``). It may hold more, including
        personal data; an implementation reads only what it needs and keeps
        nothing it was not told to keep.

    Called on the thread that created the user: an implementation must return
    within a millisecond and must not raise.
    """


@hookspec
def on_tick(app: App, now: datetime) -> None:
    """The host's periodic tick (every 10 s by default; do not assume a cadence).

    :param app: the host object; see :class:`App`.
    :param now: the host's clock, an aware UTC ``datetime``. Implementations
        take every schedule decision from it, never from their own clock, so a
        host or a test can drive time. It never goes backwards within one process
        start but may jump forward by any amount.

    The first tick comes after every module has emitted ``inventory-synced``.
    An implementation must return within a millisecond and must not raise.
    """


@hookspec
def on_shutdown(app: App) -> None:
    """The host is about to exit; called once.

    :param app: the host object; see :class:`App`.

    An implementation must return within 2 seconds whatever the network does,
    and leave nothing behind that keeps the process alive (only daemon threads,
    no pending non-daemon timers). It must not raise.
    """
