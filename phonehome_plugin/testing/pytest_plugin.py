"""pytest fixtures for MaestroHub module authors: the testing kit, enabled explicitly.

Not loaded by itself (no ``pytest11`` entry point): a module's test suite enables it
in its top-level ``conftest.py``::

    pytest_plugins = ["phonehome_plugin.testing.pytest_plugin"]

(or with ``-p phonehome_plugin.testing.pytest_plugin`` on the command line). Then:

- ``phonehome``: a :class:`~.kit.Harness`, not yet started: a simulated host that
  loads every installed ``maestrohub`` entry point (phonehome and the module under
  test), on a clock the test drives, reporting to an in-process receiver. Shut down
  after the test. It uses the two fixtures below;
- ``phonehome_environment``: the developer's telemetry switches and proxies
  (``DO_NOT_TRACK``, ``MAESTROHUB_PHONEHOME_ENABLED``, ``HTTPS_PROXY``...:
  :data:`.loopback.SWITCHES_AND_PROXIES`) and the CI markers
  (:data:`~phonehome_plugin.reports.system.CI_VARIABLES`) removed from the environment
  for the test (:data:`CLEARED`), so that a ``DO_NOT_TRACK=1`` in the shell does not
  silently turn the plugin off, and a report reads the same on a laptop and in CI;
- ``phonehome_network_guard``: connections and name lookups off the machine raise
  for the test (:mod:`.loopback`), whatever the config or a bug would reach.

A test that needs its own harness (other plugins, another config) makes one with
``Harness(tmp_path, ...)`` after requesting the last two fixtures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from phonehome_plugin.reports.system import CI_VARIABLES
from phonehome_plugin.testing import loopback
from phonehome_plugin.testing.kit import Harness

CLEARED = loopback.SWITCHES_AND_PROXIES + CI_VARIABLES
"""What ``phonehome_environment`` removes: a test sets what it means to test."""


@pytest.fixture
def phonehome_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No telemetry switch, proxy or CI marker of the developer's environment for this
    test (:data:`CLEARED`)."""
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def phonehome_network_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections and name lookups off the machine raise ``OSError`` for this test."""
    loopback.install(monkeypatch.setattr)


@pytest.fixture
def phonehome(
    tmp_path: Path, phonehome_environment: None, phonehome_network_guard: None
) -> Iterator[Harness]:
    """A simulated host with phonehome and every installed module, not yet started
    (``phonehome.start()``), reporting to an in-process receiver; shut down after."""
    with Harness(tmp_path / "maestrohub-data") as harness:
        yield harness
