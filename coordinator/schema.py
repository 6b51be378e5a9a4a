"""The coordinator's tables (SQLAlchemy Core). Alembic migrations create them; a test checks
that the two agree."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

TS = sa.DateTime(timezone=True)

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("hostname", sa.String(255), nullable=False),
    sa.Column("version", sa.String(64), nullable=False, server_default=""),
    sa.Column("resources", sa.JSON, nullable=False),
    sa.Column("gpus", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("registered_at", TS, nullable=False),
    sa.Column("last_seen_at", TS, nullable=False),
)

training_jobs = sa.Table(
    "training_jobs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("error", sa.Text, nullable=False, server_default=""),
    sa.Column("result", sa.JSON, nullable=True),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("started_at", TS, nullable=True),
    sa.Column("finished_at", TS, nullable=True),
    sa.Index("ix_training_jobs_state_created", "state", "created_at"),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column(
        "job_id",
        sa.String(64),
        sa.ForeignKey("training_jobs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("index", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    # attempt: assignments so far; preemptions: attempts handed back on purpose (not failures).
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("preemptions", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("resources", sa.JSON, nullable=False),
    sa.Column("agent_id", sa.String(64), nullable=True),
    sa.Column("lease_expires_at", TS, nullable=True),
    sa.Column("artifact_dir", sa.Text, nullable=False),
    sa.Column("checkpoint_path", sa.Text, nullable=False, server_default=""),
    sa.Column("error", sa.Text, nullable=False, server_default=""),
    sa.Column("result", sa.JSON, nullable=True),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("started_at", TS, nullable=True),
    sa.Column("finished_at", TS, nullable=True),
    sa.Index("ix_tasks_state_created", "state", "created_at"),
    sa.Index("ix_tasks_job", "job_id"),
)

job_events = sa.Table(
    "job_events",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "job_id",
        sa.String(64),
        sa.ForeignKey("training_jobs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("task_id", sa.String(80), nullable=False, server_default=""),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("time", TS, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Index("ix_job_events_job_seq", "job_id", "seq"),
)

# Metrics; the seed calls this table training_progress.
training_progress = sa.Table(
    "training_progress",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "job_id",
        sa.String(64),
        sa.ForeignKey("training_jobs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("task_id", sa.String(80), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("key", sa.String(128), nullable=False),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("time", TS, nullable=False),
    sa.UniqueConstraint("task_id", "attempt", "step", "key", name="uq_training_progress_point"),
    sa.Index("ix_training_progress_job_id", "job_id", "id"),
)

task_logs = sa.Table(
    "task_logs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "job_id",
        sa.String(64),
        sa.ForeignKey("training_jobs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("task_id", sa.String(80), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("time", TS, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.UniqueConstraint("task_id", "attempt", "seq", name="uq_task_logs_line"),
    sa.Index("ix_task_logs_job_id", "job_id", "id"),
)
