"""Evaluation scores and artefacts; checkpoint and prediction kinds (last/best/epoch, best/snapshot).

Rows of the first schema keep their meaning: every checkpoint it recorded was a kept epoch
checkpoint and every prediction folder an epoch snapshot, which the defaults say.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoint") as batch:
        batch.add_column(sa.Column("kind", sa.String(20), nullable=False, server_default="epoch"))
    with op.batch_alter_table("prediction") as batch:
        batch.add_column(sa.Column("kind", sa.String(20), nullable=False, server_default="snapshot"))
    op.create_table(
        "evaluation",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("session_id", sa.Integer, sa.ForeignKey("session.id", ondelete="CASCADE"), nullable=False),
        sa.Column("case_id", sa.String(200), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("metric", sa.String(200), nullable=False),
        sa.Column("value", sa.Float, nullable=True),
        sa.UniqueConstraint("session_id", "case_id", "label", "metric", name="uq_evaluation"),
    )
    op.create_index("ix_evaluation_session_id", "evaluation", ["session_id"])
    op.create_table(
        "artefact",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("session_id", sa.Integer, sa.ForeignKey("session.id", ondelete="CASCADE"), nullable=True),
        sa.Column("experiment_id", sa.Integer, sa.ForeignKey("experiment.id", ondelete="CASCADE"), nullable=True),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("size", sa.BigInteger, nullable=True),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.UniqueConstraint("path", name="uq_artefact_path"),
    )
    op.create_index("ix_artefact_session_id", "artefact", ["session_id"])
    op.create_index("ix_artefact_experiment_id", "artefact", ["experiment_id"])


def downgrade() -> None:
    op.drop_table("artefact")
    op.drop_table("evaluation")
    with op.batch_alter_table("prediction") as batch:
        batch.drop_column("kind")
    with op.batch_alter_table("checkpoint") as batch:
        batch.drop_column("kind")
