"""Child process of :mod:`bench.memory`: a host that pauses at each phase to be measured.

``python -m bench.child_memory MODE URL [PRELOAD]`` with MODE ``typical``,
``large``, ``off`` or ``scale-N`` (N pipelines, :func:`bench.host.scale_of`);
PRELOAD, comma-separated modules the host imports before its baseline (for
:mod:`bench.profile_memory`). At each phase it prints ``phase NAME MODULES`` (the
top-level modules imported since the previous phase, comma-separated) and waits
for a line on stdin while the parent reads its memory. It never imports psutil (the parent
measures), and builds the host's own data before the baseline, so the
differences are what the plugin adds.

Phases: ``baseline`` (host ready, entry-point discovery done, plugin not
loaded), ``loaded`` (plugin module loaded from its entry point), ``started``
(``on_startup`` returned, worker idle), ``synced`` (inventory synced, worker
idle: what the plugin holds before its first report), ``reported`` (first
tick's report built and sent).
"""

from __future__ import annotations

import gc
import importlib
import logging
import sys

from bench import guard
from bench.host import (
    LARGE,
    TYPICAL,
    CollectorsPlugin,
    Host,
    make_inventory,
    phonehome_config,
    scale_of,
)

EMPTY_GROUP = "maestrohub.bench-nothing-here"
_seen: set[str] = set()


def _phase(name: str) -> None:
    gc.collect()
    new = sorted({m.split(".")[0] for m in sys.modules} - _seen)
    _seen.update(new)
    print(f"phase {name} {','.join(new) or '-'}", flush=True)
    sys.stdin.readline()


def main(mode: str, url: str, preload: str = "") -> None:
    guard.install()
    for module in filter(None, preload.split(",")):
        importlib.import_module(module)
    logging.getLogger().addHandler(logging.NullHandler())  # keep the plugin's notice quiet
    config = phonehome_config(url, enabled=mode != "off")
    host = Host(config, load_plugin=False)
    scale = scale_of(int(mode[6:])) if mode.startswith("scale-") else None
    inventory = make_inventory(scale or (LARGE if mode == "large" else TYPICAL), host.started_at)
    if inventory.collectors:
        host.pm.register(CollectorsPlugin(inventory.collectors))
    # The host's own entry-point discovery (importlib.metadata) is paid with or without
    # the plugin: run it once for a group nothing is in, so the baseline includes it.
    host.pm.load_setuptools_entrypoints(EMPTY_GROUP)
    _seen.update(m.split(".")[0] for m in sys.modules)
    _phase("baseline")
    host.pm.load_setuptools_entrypoints("maestrohub")
    _phase("loaded")
    host.start()
    host.idle(600.0)
    _phase("started")
    host.sync(inventory)
    host.idle(600.0)
    _phase("synced")
    host.tick()
    host.idle(600.0)
    _phase("reported")
    host.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
