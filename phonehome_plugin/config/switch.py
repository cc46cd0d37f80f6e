"""The one place that decides whether telemetry is on, and why.

Any "off" wins, and nothing turns on what another source turned off:

1. ``DO_NOT_TRACK`` set to anything but empty, ``0`` or ``false``;
2. ``MAESTROHUB_PHONEHOME_ENABLED`` set to a false value (an unrecognised value
   counts as off: a switch meant to turn telemetry off fails closed);
3. an invalid ``modules.phonehome`` section (the plugin stays inert);
4. ``modules.phonehome.enabled: false``;
5. otherwise on, in the configured mode.

Deciding is bounded whatever config.yaml holds: the section is read as
:mod:`.settings` reads it (a constant number of steps, see there). An environment
value is only stripped and compared (linear in it; the OS caps one at 128 KiB),
and is quoted in ``reason`` as :func:`.bounded.label` has it: one line of at
most :data:`.bounded.DESCRIBE_MAX` characters. So ``reason`` is one line too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from phonehome_plugin.config.settings import ConfigError, Settings, parse, section_of
from phonehome_plugin.guard.bounded import label
from phonehome_plugin.guard.secrets import mask_url

ENV_ENABLED = "MAESTROHUB_PHONEHOME_ENABLED"
ENV_DNT = "DO_NOT_TRACK"
_TRUE = frozenset({"true", "1", "yes", "on"})


@dataclass(frozen=True)
class Decision:
    """Whether telemetry runs; ``reason`` is one line for the log and ``status``.

    ``switch`` names what decided (``DO_NOT_TRACK``, ``MAESTROHUB_PHONEHOME_ENABLED``,
    ``modules.phonehome`` for an invalid section, ``modules.phonehome.enabled``, or
    ``default`` when nothing is set) and ``source`` where it was set
    (``environment``, ``config.yaml`` or ``default``).
    """

    on: bool
    reason: str
    settings: Settings | None
    config_error: str | None = None
    switch: str = "default"
    source: str = "default"


def resolve(host_config: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Decision:
    """Decide from the parsed config.yaml and the environment (``os.environ`` by default)."""
    env = os.environ if environ is None else environ
    dnt = env.get(ENV_DNT, "").strip()
    if dnt and dnt.lower() not in ("0", "false"):
        return Decision(
            False, f"off: {ENV_DNT}={label(dnt)} is set", None, None, ENV_DNT, "environment"
        )
    flag = env.get(ENV_ENABLED, "").strip().lower()
    if flag and flag not in _TRUE:
        return Decision(
            False,
            f"off: {ENV_ENABLED}={label(env[ENV_ENABLED])}",
            None,
            None,
            ENV_ENABLED,
            "environment",
        )
    try:
        section = section_of(host_config)
        settings = parse(section)
    except ConfigError as error:
        reason = f"off: invalid config.yaml, {error}"
        return Decision(False, reason, None, str(error), "modules.phonehome", "config.yaml")
    if not settings.enabled:
        return Decision(
            False,
            "off: modules.phonehome.enabled is false in config.yaml",
            settings,
            None,
            "modules.phonehome.enabled",
            "config.yaml",
        )
    switch, source = (
        ("modules.phonehome.enabled", "config.yaml")
        if "enabled" in section
        else (
            "default",
            "default",
        )
    )
    return Decision(True, f"on: {doing(settings)}", settings, None, switch, source)


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
    return mask_url(url)
