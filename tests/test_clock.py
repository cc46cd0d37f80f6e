"""Times as operators read them: host-clock epoch seconds as ISO 8601 UTC to the second,
and this machine's own time, aware, where the operator's side needs one."""

from __future__ import annotations

from datetime import UTC

from e2e_support import START

from phonehome_plugin.admin.clock import stamp, wall_now


def test_stamp_is_iso_8601_utc_to_the_second_whatever_the_fraction() -> None:
    assert stamp(START.timestamp()) == "2026-03-02T08:00:00Z"
    assert stamp(START.timestamp() + 0.999) == "2026-03-02T08:00:00Z"
    assert stamp(0) == "1970-01-01T00:00:00Z"


def test_wall_now_is_aware_utc() -> None:
    assert wall_now().tzinfo is UTC
