"""What the simulated installation's modules change, as methods of the simulated host.

:class:`ModuleChanges` is the mixin :class:`~phonehome_plugin.simhost.SimHost`
inherits: the saves and deletes of users, connections, pipelines, organizations and
data models, and the UNS and license changes. Each changes the host's ``state`` and
hands the matching signal to the host's ``_emit``, which sends it only while the host
runs. The records carry :data:`~phonehome_plugin.activity.ITEM_EXTRAS`, so every
saved item holds :data:`~phonehome_plugin.activity.SECRET_MARKER`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hookspecs import signals
from phonehome_plugin.activity import ID_PREFIX, ITEM_EXTRAS

if TYPE_CHECKING:
    from blinker import NamedSignal

    from phonehome_plugin.simhost import SimState


class ModuleChanges:
    """What the installation's modules change; :class:`~phonehome_plugin.simhost.SimHost`
    inherits these methods.

    Each changes ``state`` and, while the host runs, sends the matching signal
    (through the host's ``_emit``). ``save_*`` return the id: a new one when none is
    given; an existing id is an update. Deletes of unknown ids are still sent, to
    exercise the receivers' idempotency.
    """

    state: SimState

    def _emit(self, signal: NamedSignal, **kwargs: Any) -> None:
        raise NotImplementedError  # the host sends, with EXTRAS, while it runs

    def delete_user(self, user_id: str) -> None:
        self._delete("users", signals.user_deleted, user_id)

    def save_connection(self, kind: str, connection_id: str | None = None) -> str:
        return self._save("connections", signals.connection_saved, connection_id, type=kind)

    def delete_connection(self, connection_id: str) -> None:
        self._delete("connections", signals.connection_deleted, connection_id)

    def save_pipeline(
        self, node_types: Sequence[str], *, enabled: bool = True, pipeline_id: str | None = None
    ) -> str:
        fields = {"enabled": enabled, "node_types": list(node_types)}
        return self._save("pipelines", signals.pipeline_saved, pipeline_id, **fields)

    def delete_pipeline(self, pipeline_id: str) -> None:
        self._delete("pipelines", signals.pipeline_deleted, pipeline_id)

    def save_organization(self, organization_id: str | None = None) -> str:
        return self._save("organizations", signals.organization_saved, organization_id)

    def delete_organization(self, organization_id: str) -> None:
        self._delete("organizations", signals.organization_deleted, organization_id)

    def save_data_model(self, model_id: str | None = None) -> str:
        return self._save("data_models", signals.data_model_saved, model_id)

    def delete_data_model(self, model_id: str) -> None:
        self._delete("data_models", signals.data_model_deleted, model_id)

    def set_uns(
        self,
        *,
        topic_count: int | None = None,
        client_count: int | None = None,
        mqtt_mode: str | None = None,
        storage_mode: str | None = None,
    ) -> None:
        """Change the given UNS values; ``uns-state-changed`` carries all four, absolute."""
        given = {
            "topic_count": topic_count,
            "client_count": client_count,
            "mqtt_mode": mqtt_mode,
            "storage_mode": storage_mode,
        }
        self.state.uns.update({key: value for key, value in given.items() if value is not None})
        self._emit(signals.uns_state_changed, **self.state.uns)

    def set_license(self, status: str, license_id: str | None = None) -> None:
        """Change the license status (and id, when given); sends ``license-changed``."""
        self.state.license["status"] = status
        self.state.license["license_id"] = license_id or self.state.license["license_id"]
        self._emit(signals.license_changed, **self.state.license)

    def _new_id(self, prefix: str) -> str:
        self.state.last_id += 1
        return f"{prefix}-{self.state.last_id:06d}"

    def _save(self, module: str, signal: NamedSignal, item_id: str | None, **fields: Any) -> str:
        item_id = item_id or self._new_id(ID_PREFIX[module])
        record = {"id": item_id, **fields, **ITEM_EXTRAS[module]}
        self.state.modules[module][item_id] = record
        self._emit(signal, **record)
        return item_id

    def _delete(self, module: str, signal: NamedSignal, item_id: str) -> None:
        self.state.modules[module].pop(item_id, None)
        self._emit(signal, id=item_id)
