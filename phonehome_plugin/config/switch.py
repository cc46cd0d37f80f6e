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
    """Whether telemetry runs; ``reason`` is one line for the log and ``status``."""

    on: bool
    reason: str
    settings: Settings | None
    config_error: str | None = None


def resolve(host_config: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Decision:
    """Decide from the parsed config.yaml and the environment (``os.environ`` by default)."""
    env = os.environ if environ is None else environ
    dnt = env.get(ENV_DNT, "").strip()
    if dnt and dnt.lower() not in ("0", "false"):
        return Decision(False, f"off: {ENV_DNT}={label(dnt)} is set", None)
    flag = env.get(ENV_ENABLED, "").strip().lower()
    if flag and flag not in _TRUE:
        return Decision(False, f"off: {ENV_ENABLED}={label(env[ENV_ENABLED])}", None)
    try:
        settings = parse(section_of(host_config))
    except ConfigError as error:
        return Decision(False, f"off: invalid config.yaml, {error}", None, str(error))
    if not settings.enabled:
        return Decision(False, "off: modules.phonehome.enabled is false in config.yaml", settings)
    where = without_credentials(settings.endpoint)
    return Decision(True, f"on: mode {settings.mode}, sending to {where}", settings)


def without_credentials(url: str) -> str:
    """``url`` fit for a log line, the CLI or stored state: user info, query values and
    fragment masked (:func:`.secrets.mask_url`); scheme, host, port and path kept."""
    return mask_url(url)
