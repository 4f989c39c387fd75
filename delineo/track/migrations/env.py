"""Alembic environment of the experiment database: run on the connection Delineo opens.

``delineo.track.store`` passes its connection in ``config.attributes["connection"]``, so no
``alembic.ini`` or URL is needed; the revisions ship inside the package.
"""

from __future__ import annotations

from alembic import context

from delineo.track.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reached by a hand-run `alembic` command
    raise RuntimeError("delineo's migrations run through delineo.track.store.open_store")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
