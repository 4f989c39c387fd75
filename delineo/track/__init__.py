"""The experiment database: every run, epoch, checkpoint, prediction snapshot and score.

SQLite (``runs/delineo.db``) by default, PostgreSQL by URL (``--db`` or ``DELINEO_DB``); one
SQLAlchemy schema, upgraded with Alembic. Training writes through :mod:`delineo.track.tracker`
(buffered, never blocking an epoch); ``delineo runs`` reads through :mod:`delineo.track.query`.
This package imports nothing from later stages (serve, explain) and nothing from train.
"""
