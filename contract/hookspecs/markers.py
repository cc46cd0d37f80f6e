"""The pluggy markers of the MaestroHub contract, apart so that every module can import them."""

from __future__ import annotations

import pluggy

PROJECT_NAME = "maestrohub"
"""pluggy project name, marker name and setuptools entry-point group."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
"""Marks a hook specification of the MaestroHub contract."""

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marks a hook implementation in a MaestroHub plugin."""
