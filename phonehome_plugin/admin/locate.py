"""Where the operator's config.yaml and the installation's state are, and how to read them.

:class:`Sources` names both: the config (parsed, and the file it came from) and the
data dir. The command builds one from its options (:meth:`Sources.from_files`); the
host's admin UI from its ``app`` (:meth:`Sources.of_app`), so both read the same
state the same way.

A config file the operator named (``--config``, or ``$MAESTROHUB_CONFIG``) that does
not exist is a :class:`ProblemError`: a typo must not show the defaults as if they
were the host's. An unnamed ``./config.yaml`` that does not exist means the defaults,
and :attr:`Sources.config_found` says so. A YAML error names its line and column.

The state is read through the plugin's own store, opened read-only
(:func:`.state.backends.open_store`): nothing is created, written or locked.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from phonehome_plugin.config.notice import shown_settings
from phonehome_plugin.config.settings import ConfigError, Settings, parse, section_of
from phonehome_plugin.state.backends import open_store
from phonehome_plugin.state.store import (
    BrokenStateError,
    NoStateError,
    StateUnavailableError,
    Store,
)

T = TypeVar("T")

DEFAULT_CONFIG = "config.yaml"
DEFAULT_DATA_DIR = "~/maestrohub/data"
ENV_CONFIG = "MAESTROHUB_CONFIG"
LINE_MAX = 200
"""Characters of a YAML parse error quoted, at most."""


class ProblemError(Exception):
    """An operator-facing problem, in one line (the command prints it and exits 1)."""


@dataclass(frozen=True)
class Sources:
    """The config and the state an operator's question is about.

    ``config`` is the parsed config.yaml (empty when none was found), ``config_file``
    the file it came from (or would have: see ``config_found``), ``data_dir`` where
    the SQLite state lives (unless the config names a ``state_url``).
    """

    config: Mapping[str, Any]
    config_file: Path | None
    config_found: bool
    data_dir: Path
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    @classmethod
    def from_files(
        cls,
        config: str | None,
        data_dir: str,
        environ: Mapping[str, str] | None = None,
    ) -> Sources:
        """From the command's options: ``config`` as given on the command line (None:
        ``$MAESTROHUB_CONFIG``, else ``./config.yaml``, which may be missing)."""
        env = dict(os.environ if environ is None else environ)
        named = config if config is not None else env.get(ENV_CONFIG) or None
        path = Path(named or DEFAULT_CONFIG).expanduser()
        parsed, found = load_config(path, named=named is not None)
        return cls(parsed, path, found, Path(data_dir).expanduser(), env)

    @classmethod
    def of_app(cls, app: Any, environ: Mapping[str, str] | None = None) -> Sources:
        """From the host's ``app`` (``config``, ``config_path``, ``data_dir``): what the
        host's admin UI uses. ``environ`` defaults to the host process's environment."""
        path = Path(app.config_path) if app.config_path is not None else None
        env = dict(os.environ if environ is None else environ)
        return cls(app.config, path, path is not None, Path(app.data_dir), env)

    def settings(self) -> Settings:
        """The config's ``modules.phonehome``, validated; an invalid one is a problem."""
        try:
            return parse(section_of(self.config))
        except ConfigError as error:
            raise self.invalid(str(error)) from error

    def invalid(self, error: str) -> ProblemError:
        """The one line for an invalid ``modules.phonehome`` (``error`` is bounded)."""
        return ProblemError(f"{self.config_file or 'config'}: {error}; telemetry is off")

    def state_url(self) -> str | None:
        return self.settings().state_url

    def where(self) -> str:
        """Where the state is read from, for a message (credentials never shown)."""
        url = self.state_url()
        if url:
            return f"PostgreSQL {shown_settings(Settings(state_url=url))['state_url']}"
        return str(self.data_dir)

    def open(self) -> Store:
        """The installation's store, read-only; raises :class:`~.store.NoStateError`
        (the message says why) when there is no state to read."""
        return open_store(self.data_dir, self.state_url(), read_only=True)

    def open_writable(self) -> Store:
        """The installation's store, for the few commands that change it (``export``
        marks, ``forget``); call it only once a read-only open found the state. State
        that cannot be written from here is a :class:`ProblemError`, never a store in
        memory (what was written there would be lost)."""
        try:
            store = open_store(self.data_dir, self.state_url())
        except StateUnavailableError as error:
            raise ProblemError(
                f"the state at {self.where()} cannot be written from here ({error})"
            ) from error
        if store.memory:
            store.close()
            raise ProblemError(f"the state at {self.where()} cannot be written from here")
        return store

    def read(self, query: Callable[[Store], T]) -> T:
        """``query(store)`` on the installation's state, read-only; no state, or state
        that cannot be read, is a :class:`ProblemError`."""
        try:
            store = self.open()
            try:
                return query(store)
            finally:
                store.close()
        except NoStateError as error:
            raise ProblemError(str(error)) from error


def load_config(path: Path, named: bool) -> tuple[Mapping[str, Any], bool]:
    """The parsed config.yaml at ``path`` and whether it was found.

    Missing: an empty config (all defaults) unless ``named`` (then a problem). Only
    ``yaml.safe_load`` walks the parsed file (a YAML alias bomb parses in
    milliseconds into a small graph of shared lists); what is done with it afterwards
    is bounded (see :mod:`.config.settings`). A parse error names its line and
    column and quotes PyYAML's words up to :data:`LINE_MAX` characters.
    """
    import yaml

    if not path.exists():
        if named:
            raise ProblemError(f"config file {path} does not exist")
        return {}, False
    try:
        loaded = yaml.safe_load(path.read_text("utf-8"))
    except RecursionError as error:  # PyYAML composes nested collections recursively
        raise ProblemError(f"cannot read {path}: nested too deeply") from error
    except yaml.MarkedYAMLError as error:
        raise ProblemError(f"cannot read {path}: {_marked(error)}") from error
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ProblemError(f"cannot read {path}: {_first_line(why)}") from error
    if loaded is None:
        return {}, True
    if not isinstance(loaded, Mapping):
        raise ProblemError(f"{path}: expected a mapping at the top level")
    return loaded, True


def _marked(error: Any) -> str:
    """``line L, column C: problem``, from PyYAML's marks (0-based there)."""
    mark = error.problem_mark or error.context_mark
    said = _first_line(str(error.problem or error.context or type(error).__name__))
    if mark is None:
        return said
    return f"line {mark.line + 1}, column {mark.column + 1}: {said}"


def _first_line(text: str) -> str:
    # The first line only, cut: PyYAML quotes what it choked on (an alias name may be
    # as long as the file), and a problem is one line on stderr.
    return (text.splitlines() or [""])[0][:LINE_MAX]


def has_table(store: Store, table: str) -> bool:
    """Whether ``table`` exists in ``store``, a store opened read-only (state written by
    an earlier version of the plugin lacks the newer tables until a host start adds
    them)."""
    try:
        store.run(lambda c: c.execute(f"SELECT 1 FROM {table} WHERE 1 = 0").fetchall())
    except BrokenStateError:
        return False
    return True
