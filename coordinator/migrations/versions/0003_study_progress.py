"""study progress and trial pruning

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("error", sa.Text(), server_default="", nullable=False))
        batch.create_index("ix_studies_state", ["state"], unique=False)
    with op.batch_alter_table("trials") as batch:
        batch.add_column(sa.Column("judged", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("pruned_rung", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("pruned_resource", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("error", sa.Text(), server_default="", nullable=False))
        batch.create_index("ix_trials_job", ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.drop_index("ix_trials_job")
        batch.drop_column("error")
        batch.drop_column("pruned_resource")
        batch.drop_column("pruned_rung")
        batch.drop_column("judged")
    with op.batch_alter_table("studies") as batch:
        batch.drop_index("ix_studies_state")
        batch.drop_column("error")
