"""The installation's durable state: the :class:`~.store.Store` interface and the SQL
written on it (:mod:`.store`), its two backends (:mod:`.sqlite`, :mod:`.postgres`),
which one an installation uses (:mod:`.backends`, the only module that knows
both), fork safety (:mod:`.forksafe`), the outbox (:mod:`.outbox`) and the history
of deliveries (:mod:`.history`).

Nothing outside this folder names a backend: the rest of the plugin opens its state
with :func:`.backends.open_store` and sees a :class:`~.store.Store`; so does the
``phonehome`` command, opening it read-only (nothing created, written or locked).

May import: config.
"""
