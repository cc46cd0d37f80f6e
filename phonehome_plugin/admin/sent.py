"""``phonehome history`` as plain data: what was sent, and the exact bytes that left.

:func:`events` lists the delivery outcomes, newest first, each with the sha256 and
size of the body kept for its report (:mod:`.state.history`). :func:`report` gives
one kept report's exact bytes; :func:`diff` compares it with the report before it,
field by field (dotted paths: ``executions.total``, ``connections.by_type.mqtt``).

Read-only, like :mod:`.status`: state written by an earlier version of the plugin,
without kept bodies, lists its events and has no bodies to show.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from phonehome_plugin.admin.clock import stamp
from phonehome_plugin.admin.locate import ProblemError, Sources, has_table
from phonehome_plugin.state import history
from phonehome_plugin.state.store import Store

_ABSENT = object()


@dataclass(frozen=True)
class Change:
    """One field that differs: ``before`` or ``after`` is None when the field is absent
    on that side (``present_before``/``present_after`` tell an absent field from a null)."""

    field: str
    before: Any
    after: Any
    present_before: bool = True
    present_after: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """``~ field: before -> after``, ``+ field: after`` or ``- field: before``."""
        if not self.present_before:
            return f"+ {self.field}: {_shown(self.after)}"
        if not self.present_after:
            return f"- {self.field}: {_shown(self.before)}"
        return f"~ {self.field}: {_shown(self.before)} -> {_shown(self.after)}"


def events(sources: Sources, limit: int = 20) -> list[dict[str, Any]]:
    """The newest ``limit`` delivery outcomes, newest first, as plain data."""

    def query(store: Store) -> list[dict[str, Any]]:
        found = history.recent(store, limit)
        kept = history.digests(store) if has_table(store, "sent_reports") else {}
        listed = []
        for event in found:
            sha256, size = kept.get(event.report_id, (None, None))
            listed.append(
                {**asdict(event), "at": stamp(event.at), "sha256": sha256, "bytes": size}
            )
        return listed

    return sources.read(query)


def report(sources: Sources, ref: str) -> history.Sent:
    """The kept report ``ref`` names (its sequence, its report id, or ``last``)."""

    def query(store: Store) -> history.Sent | None:
        return history.kept_report(store, ref) if has_table(store, "sent_reports") else None

    found = sources.read(query)
    if found is None:
        raise ProblemError(f"no kept report {ref!r} (see `phonehome history`)")
    return found


def diff(sources: Sources, ref: str) -> tuple[history.Sent, history.Sent | None, list[Change]]:
    """The report ``ref`` names, the kept report before it (None: it is the first kept)
    and the fields that differ between the two (all of them when there is none)."""
    after = report(sources, ref)
    before = sources.read(lambda store: history.kept_before(store, after.sequence))
    old = {} if before is None else json.loads(before.body)
    return after, before, field_diff(old, json.loads(after.body))


def field_diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Change]:
    """The leaves (dotted paths) that differ between two reports, in ``after``'s order,
    then those only ``before`` has."""
    old, new = _leaves(before), _leaves(after)
    changes = [
        Change(path, old.get(path), value, path in old, True)
        for path, value in new.items()
        if path not in old or old[path] != value or type(old[path]) is not type(value)
    ]
    changes += [
        Change(path, value, None, True, False) for path, value in old.items() if path not in new
    ]
    return changes


def _leaves(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, item in value.items():
        path = f"{prefix}{key}"
        if isinstance(item, Mapping) and item:
            found.update(_leaves(item, f"{path}."))
        else:
            found[path] = item
    return found


def _shown(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
