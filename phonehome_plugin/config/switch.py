"""The one place that decides whether telemetry is on, and why.

Any "off" wins, and nothing turns on what another source turned off:

1. ``DO_NOT_TRACK`` set to anything but empty, ``0`` or ``false``;
2. ``MAESTROHUB_PHONEHOME_ENABLED`` set to a false value (an unrecognised value
   counts as off: a switch meant to turn telemetry off fails closed);
3. ``modules.phonehome.enabled: false`` (the boolean), read before the rest of the
   section: the one line turns telemetry off whatever else the section holds.
   The rest is read only when asked for (:attr:`Decision.settings`,
   :attr:`Decision.config_error`: ``status`` shows it), never at a host start;
4. an invalid ``modules.phonehome`` section (the plugin stays inert);
5. otherwise on, in the configured mode.

Deciding is bounded whatever config.yaml holds: the section is read as
:mod:`.settings` reads it (a constant number of steps, see there). An environment
value is only stripped and compared (linear in it; the OS caps one at 128 KiB),
and is quoted in ``reason`` as :func:`.bounded.label` has it: one line of at
most :data:`.bounded.DESCRIBE_MAX` characters. So ``reason`` is one line too.

An "off" from rules 1 to 3 imports nothing but this module: a host that turns
telemetry off pays for no settings, no dataclass and no regular expression.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from phonehome_plugin.config.settings import Settings

ENV_ENABLED = "MAESTROHUB_PHONEHOME_ENABLED"
ENV_DNT = "DO_NOT_TRACK"
_TRUE = frozenset({"true", "1", "yes", "on"})


INVALID = "modules.phonehome"
""":attr:`Decision.switch` of an off decided by an invalid section (rule 4)."""
ENABLED = "modules.phonehome.enabled"
""":attr:`Decision.switch` when the section's ``enabled`` decided, off or on."""
_DISABLED = "off: modules.phonehome.enabled is false in config.yaml"


class Decision:
    """Whether telemetry runs; ``reason`` is one line for the log and ``status``.

    ``switch`` names what decided (``DO_NOT_TRACK``, ``MAESTROHUB_PHONEHOME_ENABLED``,
    ``modules.phonehome`` for an invalid section, ``modules.phonehome.enabled``, or
    ``default`` when nothing is set) and ``source`` where it was set
    (``environment``, ``config.yaml`` or ``default``).

    ``settings`` is the section read (None when it was not read or is invalid) and
    ``config_error`` what is invalid in it. After ``enabled: false`` (rule 3) both
    are worked out on first access, so that deciding "off" reads nothing more; the
    decision itself (``on``, ``reason``, ``switch``, ``source``) never depends on
    them then. A plain class with slots: a dataclass would cost every host start
    that turns telemetry off more than the rest of this module.
    """

    __slots__ = ("_error", "_settings", "_unread", "on", "reason", "source", "switch")

    def __init__(
        self,
        on: bool,
        reason: str,
        settings: Settings | None,
        config_error: str | None = None,
        switch: str = "default",
        source: str = "default",
        unread: Mapping[str, Any] | None = None,
    ) -> None:
        self.on = on
        self.reason = reason
        self.switch = switch
        self.source = source
        self._settings = settings
        self._error = config_error
        self._unread = unread

    @property
    def settings(self) -> Settings | None:
        """The section read into :class:`~.settings.Settings`; None if invalid or unread."""
        self._read()
        return self._settings

    @property
    def config_error(self) -> str | None:
        """What is invalid in the section (None: valid, or not read)."""
        self._read()
        return self._error

    def _read(self) -> None:
        section, self._unread = self._unread, None
        if section is None:
            return
        from phonehome_plugin.config.settings import ConfigError, parse

        try:
            self._settings = parse(section)
        except ConfigError as error:
            self._error = str(error)

    def __repr__(self) -> str:
        return (
            f"Decision(on={self.on!r}, reason={self.reason!r}, switch={self.switch!r}, "
            f"source={self.source!r})"
        )


def resolve(host_config: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Decision:
    """Decide from the parsed config.yaml and the environment (``os.environ`` by default)."""
    env = os.environ if environ is None else environ
    dnt = env.get(ENV_DNT, "").strip()
    if dnt and dnt.lower() not in ("0", "false"):
        return Decision(
            False, f"off: {ENV_DNT}={_label(dnt)} is set", None, None, ENV_DNT, "environment"
        )
    flag = env.get(ENV_ENABLED, "").strip().lower()
    if flag and flag not in _TRUE:
        return Decision(
            False,
            f"off: {ENV_ENABLED}={_label(env[ENV_ENABLED])}",
            None,
            None,
            ENV_ENABLED,
            "environment",
        )
    disabled = _disabled_section(host_config)
    if disabled is not None:
        return Decision(False, _DISABLED, None, None, ENABLED, "config.yaml", disabled)
    from phonehome_plugin.config.settings import ConfigError, parse, section_of

    try:
        section = section_of(host_config)
        settings = parse(section)
    except ConfigError as error:
        reason = f"off: invalid config.yaml, {error}"
        return Decision(False, reason, None, str(error), INVALID, "config.yaml")
    if not settings.enabled:  # a mapping of another type than dict says false
        return Decision(False, _DISABLED, settings, None, ENABLED, "config.yaml")
    switch, source = (
        (ENABLED, "config.yaml")
        if "enabled" in section
        else (
            "default",
            "default",
        )
    )
    return Decision(True, f"on: {doing(settings)}", settings, None, switch, source)


def _disabled_section(host_config: object) -> Mapping[str, Any] | None:
    """The section, if it is plain config.yaml data that says ``enabled: false``.

    Only plain dicts (what a YAML loader makes) are looked into here, three lookups
    in all; any other shape takes the full reading, which checks it."""
    modules = host_config.get("modules") if type(host_config) is dict else None
    section = modules.get("phonehome") if type(modules) is dict else None
    if type(section) is dict and section.get("enabled") is False:
        return section
    return None


def _label(value: str) -> str:
    from phonehome_plugin.guard.bounded import label

    return label(value)


def doing(settings: Settings) -> str:
    """What telemetry does in ``settings.mode``, in a few words; only mode ``send``
    says "sending"."""
    where = without_credentials(settings.endpoint)
    if settings.mode == "send":
        return f"mode send, sending to {where}"
    if settings.mode == "log":
        return f"mode log, reports are logged and not sent (endpoint {where} unused)"
    return (
        "mode offline, reports are kept for `phonehome export` and not sent "
        f"(endpoint {where} unused)"
    )


def without_credentials(url: str) -> str:
    """``url`` fit for a log line, the CLI or stored state: user info, query values and
    fragment masked (:func:`.secrets.mask_url`); scheme, host, port and path kept."""
    from phonehome_plugin.guard.secrets import mask_url

    return mask_url(url)
