"""First schema: experiments, sessions, per-epoch metrics, checkpoints, prediction snapshots.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "experiment",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("config", sa.JSON, nullable=True),
        sa.Column("config_hash", sa.String(64), nullable=True),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "session",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("uid", sa.String(36), nullable=False),
        sa.Column("experiment_id", sa.Integer, sa.ForeignKey("experiment.id", ondelete="CASCADE"), nullable=False),
        sa.Column("fold", sa.Integer, nullable=True),
        sa.Column("run_dir", sa.Text, nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("modified", sa.DateTime, nullable=False),
        sa.Column("current_epoch", sa.Integer, nullable=False),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("git_commit", sa.String(64), nullable=True),
        sa.Column("seed", sa.Integer, nullable=True),
        sa.Column("versions", sa.JSON, nullable=True),
        sa.Column("config", sa.JSON, nullable=True),
        sa.Column("config_hash", sa.String(64), nullable=True),
        sa.UniqueConstraint("uid"),
    )
    op.create_index("ix_session_experiment_id", "session", ["experiment_id"])
    op.create_table(
        "epoch_metric",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("session_id", sa.Integer, sa.ForeignKey("session.id", ondelete="CASCADE"), nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("logged", sa.DateTime, nullable=False),
        sa.UniqueConstraint("session_id", "epoch", "name", name="uq_epoch_metric"),
    )
    op.create_index("ix_epoch_metric_session_id", "epoch_metric", ["session_id"])
    op.create_table(
        "checkpoint",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("session_id", sa.Integer, sa.ForeignKey("session.id", ondelete="CASCADE"), nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("size", sa.BigInteger, nullable=True),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.UniqueConstraint("session_id", "path", name="uq_checkpoint_path"),
    )
    op.create_index("ix_checkpoint_session_id", "checkpoint", ["session_id"])
    op.create_table(
        "prediction",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("session_id", sa.Integer, sa.ForeignKey("session.id", ondelete="CASCADE"), nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("n_files", sa.Integer, nullable=True),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.UniqueConstraint("session_id", "path", name="uq_prediction_path"),
    )
    op.create_index("ix_prediction_session_id", "prediction", ["session_id"])


def downgrade() -> None:
    for table in ("prediction", "checkpoint", "epoch_metric", "session", "experiment"):
        op.drop_table(table)
