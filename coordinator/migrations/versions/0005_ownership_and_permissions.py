"""ownership and token permissions

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

Who made each record: jobs, studies and active-learning projects get an owner (the token's name
and id, a client certificate's subject, or `local` with authentication off); batches, labels,
hand-fired triggers, cancels and token operations record who did them. Rows stored before this
revision get the owner `unknown`. Tokens get permissions beyond their role (`scripts`,
`cancel-any`). Agents say whether they run `script` tasks (off for agents registered before).
New tables: the audit log of state-changing calls, and per-token limits.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UNKNOWN = sa.text("'unknown'")


def _owner_columns(table: str) -> None:
    with op.batch_alter_table(table) as batch:
        batch.add_column(
            sa.Column("owner", sa.String(length=200), server_default=UNKNOWN, nullable=False)
        )
        batch.add_column(sa.Column("owner_token_id", sa.String(length=64), nullable=True))


def upgrade() -> None:
    for table in ("training_jobs", "studies", "al_projects"):
        _owner_columns(table)
    for table in ("training_jobs", "studies"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("cancelled_by", sa.String(length=200), nullable=True))
    op.create_index("ix_training_jobs_owner", "training_jobs", ["owner"], unique=False)
    with op.batch_alter_table("active_learning_batches") as batch:
        batch.add_column(
            sa.Column("created_by", sa.String(length=200), server_default=UNKNOWN, nullable=False)
        )
    with op.batch_alter_table("active_learning_candidates") as batch:
        batch.add_column(sa.Column("labelled_by", sa.String(length=200), nullable=True))
    with op.batch_alter_table("retraining_triggers") as batch:
        batch.add_column(sa.Column("fired_by", sa.String(length=200), nullable=True))
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(
            sa.Column("permissions", sa.String(length=200), server_default="", nullable=False)
        )
        batch.add_column(
            sa.Column("created_by", sa.String(length=200), server_default=UNKNOWN, nullable=False)
        )
        batch.add_column(sa.Column("revoked_by", sa.String(length=200), nullable=True))
    with op.batch_alter_table("agents") as batch:
        batch.add_column(
            sa.Column("allow_scripts", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("who", sa.String(length=200), nullable=False),
        sa.Column("token_id", sa.String(length=64), nullable=True),
        sa.Column("method", sa.String(length=128), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("peer", sa.String(length=200), server_default="", nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_log_time", "audit_log", ["time"], unique=False)
    op.create_index("ix_audit_log_who_time", "audit_log", ["who", "time"], unique=False)
    op.create_table(
        "token_limits",
        sa.Column("token_id", sa.String(length=64), nullable=False),
        sa.Column("max_running_tasks", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_gpus", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_queued_jobs", sa.Integer(), server_default="0", nullable=False),
        sa.Column("updated_by", sa.String(length=200), server_default=UNKNOWN, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["token_id"], ["tokens.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("token_id"),
    )


def downgrade() -> None:
    op.drop_table("token_limits")
    op.drop_index("ix_audit_log_who_time", table_name="audit_log")
    op.drop_index("ix_audit_log_time", table_name="audit_log")
    op.drop_table("audit_log")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("allow_scripts")
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("revoked_by")
        batch.drop_column("created_by")
        batch.drop_column("permissions")
    with op.batch_alter_table("retraining_triggers") as batch:
        batch.drop_column("fired_by")
    with op.batch_alter_table("active_learning_candidates") as batch:
        batch.drop_column("labelled_by")
    with op.batch_alter_table("active_learning_batches") as batch:
        batch.drop_column("created_by")
    op.drop_index("ix_training_jobs_owner", table_name="training_jobs")
    for table in ("training_jobs", "studies"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("cancelled_by")
    for table in ("training_jobs", "studies", "al_projects"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("owner_token_id")
            batch.drop_column("owner")
