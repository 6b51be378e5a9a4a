"""active learning projects and model versions

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "al_projects",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("trigger_id", sa.String(length=64), nullable=True),
        sa.Column("feedback_samples", sa.Integer(), server_default="0", nullable=False),
        sa.Column("val_accuracy", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["training_jobs.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["project_id"], ["al_projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "version", name="uq_model_version"),
    )
    op.create_table(
        "al_scorings",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["training_jobs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["project_id"], ["al_projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_al_scorings_project", "al_scorings", ["project_id"], unique=False)
    with op.batch_alter_table("active_learning_batches") as batch:
        batch.add_column(sa.Column("project_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("scoring_job_id", sa.String(length=64), nullable=True))
        batch.create_foreign_key(
            "fk_al_batches_project", "al_projects", ["project_id"], ["id"], ondelete="CASCADE"
        )
        batch.create_foreign_key(
            "fk_al_batches_scoring_job",
            "training_jobs",
            ["scoring_job_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_index("ix_al_batches_project", ["project_id"], unique=False)
    with op.batch_alter_table("retraining_triggers") as batch:
        batch.add_column(sa.Column("project_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("dedupe_key", sa.String(length=128), nullable=True))
        batch.create_foreign_key(
            "fk_triggers_project", "al_projects", ["project_id"], ["id"], ondelete="CASCADE"
        )
        batch.create_unique_constraint("uq_trigger_key", ["project_id", "kind", "dedupe_key"])


def downgrade() -> None:
    with op.batch_alter_table("retraining_triggers") as batch:
        batch.drop_constraint("uq_trigger_key", type_="unique")
        batch.drop_constraint("fk_triggers_project", type_="foreignkey")
        batch.drop_column("dedupe_key")
        batch.drop_column("project_id")
    with op.batch_alter_table("active_learning_batches") as batch:
        batch.drop_index("ix_al_batches_project")
        batch.drop_constraint("fk_al_batches_scoring_job", type_="foreignkey")
        batch.drop_constraint("fk_al_batches_project", type_="foreignkey")
        batch.drop_column("scoring_job_id")
        batch.drop_column("project_id")
    op.drop_index("ix_al_scorings_project", table_name="al_scorings")
    op.drop_table("al_scorings")
    op.drop_table("model_versions")
    op.drop_table("al_projects")
