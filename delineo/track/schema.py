"""The experiment database's tables, as SQLAlchemy 2 models (one schema for SQLite and PostgreSQL).

Metrics are rows, not columns (``epoch_metric``: session, epoch, name, value), because every
experiment logs its own set (Dice per label, F1 for classifiers, plugin metrics) and a fixed
column list would need a migration for each new one. Every table that training writes has a
natural unique key, so a write that is retried after a lost connection is an upsert, never a
duplicate. Epochs count from 1: epoch N is the N-th epoch, after which N epochs are done (a
checkpoint of epoch N holds the weights after N epochs; ``log.csv`` counts from 0).

The tables here must match what the Alembic revisions in ``migrations/versions`` build; a test
compares the two.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Experiment(Base):
    """One experiment file (by its ``name``), with the resolved config it was first run with."""

    __tablename__ = "experiment"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    config: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON(none_as_null=True), nullable=True)
    config_hash: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    sessions: Mapped[list["Session"]] = relationship(back_populates="experiment", cascade="all, delete-orphan",
                                                     passive_deletes=True)


class Session(Base):
    """One training run of an experiment (a fold); ``--resume`` continues the same session."""

    __tablename__ = "session"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(36), unique=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiment.id", ondelete="CASCADE"), index=True)
    fold: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    run_dir: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(20), default="running")
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    modified: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    current_epoch: Mapped[int] = mapped_column(Integer, default=0)
    host: Mapped[Optional[str]] = mapped_column(String(255), nullable=True)
    git_commit: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    seed: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    versions: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON(none_as_null=True), nullable=True)
    config: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON(none_as_null=True), nullable=True)
    config_hash: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    experiment: Mapped[Experiment] = relationship(back_populates="sessions")


class EpochMetric(Base):
    """One metric of one epoch: any name, as the training loop logs it."""

    __tablename__ = "epoch_metric"
    __table_args__ = (UniqueConstraint("session_id", "epoch", "name", name="uq_epoch_metric"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("session.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    value: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    logged: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Checkpoint(Base):
    """A checkpoint file: ``kind`` is ``epoch`` (kept), ``last`` or ``best`` (overwritten, so upserted)."""

    __tablename__ = "checkpoint"
    __table_args__ = (UniqueConstraint("session_id", "path", name="uq_checkpoint_path"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("session.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20), default="epoch", server_default="epoch")
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    size: Mapped[Optional[int]] = mapped_column(BigInteger, nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Prediction(Base):
    """A folder of validation predictions: an epoch snapshot (``snapshot``) or the best (``best``)."""

    __tablename__ = "prediction"
    __table_args__ = (UniqueConstraint("session_id", "path", name="uq_prediction_path"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("session.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20), default="snapshot", server_default="snapshot")
    path: Mapped[str] = mapped_column(Text)
    n_files: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Evaluation(Base):
    """One score of one case and label after evaluation (``metrics/cases.csv`` as rows)."""

    __tablename__ = "evaluation"
    __table_args__ = (UniqueConstraint("session_id", "case_id", "label", "metric", name="uq_evaluation"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("session.id", ondelete="CASCADE"), index=True)
    case_id: Mapped[str] = mapped_column(String(200))
    label: Mapped[str] = mapped_column(String(200))
    metric: Mapped[str] = mapped_column(String(200))
    value: Mapped[Optional[float]] = mapped_column(Float, nullable=True)


class Artefact(Base):
    """A file worth finding again (a ``.delineo`` model file, a report) with its checksum."""

    __tablename__ = "artefact"
    __table_args__ = (UniqueConstraint("path", name="uq_artefact_path"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[Optional[int]] = mapped_column(ForeignKey("session.id", ondelete="CASCADE"), nullable=True,
                                                      index=True)
    experiment_id: Mapped[Optional[int]] = mapped_column(ForeignKey("experiment.id", ondelete="CASCADE"),
                                                         nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(40))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    size: Mapped[Optional[int]] = mapped_column(BigInteger, nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
