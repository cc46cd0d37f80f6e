"""The signals MaestroHub modules emit (section 4 of the contract).

All live in one private :class:`blinker.Namespace`; the module attribute is the
snake_case of the signal's kebab-case name. The sender is always ``app``.

Every signal may carry keyword arguments beyond those documented: the host
passes whole objects along, which can hold credentials, workflow content and
personal data. Receivers accept ``**extra`` and never copy anything they were
not told to count. Receivers run on the emitting thread, so they must be cheap.

Saved/deleted signals are idempotent: the same ``*-saved`` twice is one entity,
and a delete of an unknown id changes nothing.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

inventory_synced = _signals.signal(
    "inventory-synced",
    doc="Full current state of one module; replaces what a receiver knew of it. "
    "Arguments: ``module`` (``users``, ``connections``, ``pipelines``, "
    "``organizations`` or ``data_models``) and ``items``, a list of mappings shaped "
    "like that module's ``*-saved`` arguments (users: ``id``, ``email``, ``created_at``).",
)
user_deleted = _signals.signal("user-deleted", doc="A user was deleted. Arguments: ``id``.")
connection_saved = _signals.signal(
    "connection-saved",
    doc="A connection profile was created or updated. Arguments: ``id``, ``type`` "
    "(an open set of lower-case ids such as ``mqtt``, ``opcua``, ``modbus``, ``s7``).",
)
connection_deleted = _signals.signal(
    "connection-deleted", doc="A connection profile was deleted. Arguments: ``id``."
)
pipeline_saved = _signals.signal(
    "pipeline-saved",
    doc="A pipeline was created or updated. Arguments: ``id``, ``enabled`` (bool), "
    "``node_types`` (a list of node type ids, one per node, e.g. ``trigger.manual``).",
)
pipeline_deleted = _signals.signal(
    "pipeline-deleted", doc="A pipeline was deleted. Arguments: ``id``."
)
execution_finished = _signals.signal(
    "execution-finished",
    doc="A pipeline execution reached a terminal state. Arguments: ``pipeline_id``, "
    "``status`` (``completed``, ``failed``, ``completed_with_errors`` or ``cancelled``), "
    "``duration_ms``. The hottest signal: receivers must do O(1) work.",
)
organization_saved = _signals.signal(
    "organization-saved", doc="An organization was created or updated. Arguments: ``id``."
)
organization_deleted = _signals.signal(
    "organization-deleted", doc="An organization was deleted. Arguments: ``id``."
)
data_model_saved = _signals.signal(
    "data-model-saved", doc="A data model was created or updated. Arguments: ``id``."
)
data_model_deleted = _signals.signal(
    "data-model-deleted", doc="A data model was deleted. Arguments: ``id``."
)
uns_state_changed = _signals.signal(
    "uns-state-changed",
    doc="Absolute UNS state, sent at startup and on change. Arguments: ``topic_count``, "
    "``client_count``, ``mqtt_mode`` (``embedded`` or ``external``), ``storage_mode`` "
    "(e.g. ``pebble``, ``timescale``).",
)
license_changed = _signals.signal(
    "license-changed",
    doc="License state, sent at startup and on change. Arguments: ``license_id``, "
    "``status`` (``trial``, ``active`` or ``expired``).",
)

ALL = (
    inventory_synced,
    user_deleted,
    connection_saved,
    connection_deleted,
    pipeline_saved,
    pipeline_deleted,
    execution_finished,
    organization_saved,
    organization_deleted,
    data_model_saved,
    data_model_deleted,
    uns_state_changed,
    license_changed,
)
"""Every signal of the contract, in the order the contract lists them."""
