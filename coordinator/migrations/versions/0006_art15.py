"""uploaded artifact objects

Revision ID: 0006_art15
Revises: 0005
Create Date: 2026-12-07

Files agents upload to the coordinator's artifact store (hosts that share nothing): one row per
committed object with its size and SHA-256, which downloads check the stored bytes against.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_art15"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "artifact_objects",
        sa.Column("uri", sa.String(length=1024), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("task_id", sa.String(length=80), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("agent_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["training_jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("uri"),
    )
    op.create_index(
        "ix_artifact_objects_task", "artifact_objects", ["task_id", "kind"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_artifact_objects_task", table_name="artifact_objects")
    op.drop_table("artifact_objects")
