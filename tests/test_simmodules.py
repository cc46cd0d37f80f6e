"""The simulated installation's modules: saves and deletes change the host's state and,
while it runs, send their signal; UNS and license changes send absolute values."""

from __future__ import annotations

from collections.abc import Callable

from simhost_support import Recorder

from phonehome_plugin.testing.simhost import SimHost


def test_saves_are_idempotent_and_unknown_deletes_are_still_sent(
    hosts: Callable[..., SimHost], recorder: Recorder
) -> None:
    host = hosts(recorder)
    host.start()
    host.save_connection("mqtt", "c1")
    host.save_connection("opcua", "c1")
    host.delete_connection("never-saved")

    assert list(host.state.modules["connections"]) == ["c1"]
    assert host.state.modules["connections"]["c1"]["type"] == "opcua"
    saved = [(e.kwargs["id"], e.kwargs["type"]) for e in recorder.of("connection-saved")]
    assert saved == [("c1", "mqtt"), ("c1", "opcua")]
    assert [e.kwargs["id"] for e in recorder.of("connection-deleted")] == ["never-saved"]


def test_a_uns_change_sends_all_four_values_absolute(
    hosts: Callable[..., SimHost], recorder: Recorder
) -> None:
    host = hosts(recorder)
    host.start()
    host.set_uns(topic_count=120, client_count=4)
    host.set_uns(storage_mode="timescale")

    _, *changes = (e.kwargs for e in recorder.of("uns-state-changed"))  # after start()'s
    keys = ("topic_count", "client_count", "mqtt_mode", "storage_mode")
    assert [tuple(change[key] for key in keys) for change in changes] == [
        (120, 4, "embedded", "pebble"),
        (120, 4, "embedded", "timescale"),
    ]
