"""The coordinator's tables (SQLAlchemy Core). Alembic migrations create them; a test checks
that the two agree."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

TS = sa.DateTime(timezone=True)


def owner_columns() -> list[sa.Column[str]]:
    """Who made the record: a token's name and id, a certificate's subject, or `local`."""
    return [
        sa.Column("owner", sa.String(200), nullable=False, server_default="unknown"),
        sa.Column("owner_token_id", sa.String(64), nullable=True),
    ]


def job_ref(
    name: str = "job_id", *, optional: bool = False, primary_key: bool = False
) -> sa.Column[str]:
    """A reference to a job. Required references go with the job (CASCADE); optional ones
    outlive it (SET NULL)."""
    return sa.Column(
        name,
        sa.String(64),
        sa.ForeignKey("training_jobs.id", ondelete="SET NULL" if optional else "CASCADE"),
        nullable=optional,
        primary_key=primary_key,
    )


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
    # Whether the agent's host runs `script` tasks (its --allow-scripts).
    sa.Column("allow_scripts", sa.Boolean, nullable=False, server_default=sa.false()),
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
    *owner_columns(),
    sa.Column("cancelled_by", sa.String(200), nullable=True),
    sa.Index("ix_training_jobs_state_created", "state", "created_at"),
    sa.Index("ix_training_jobs_owner", "owner"),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.String(80), primary_key=True),
    job_ref(),
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
    job_ref(),
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
    job_ref(),
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
    job_ref(),
    sa.Column("task_id", sa.String(80), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("time", TS, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.UniqueConstraint("task_id", "attempt", "seq", name="uq_task_logs_line"),
    sa.Index("ix_task_logs_job_id", "job_id", "id"),
)

# The job's validated settings, one row per name, for dashboards and parameter sharing.
training_parameters = sa.Table(
    "training_parameters",
    metadata,
    job_ref(primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("value", sa.JSON, nullable=True),
)

# Files a task produced (checkpoints, models, reports), as the coordinator was told of them.
artifacts = sa.Table(
    "artifacts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    job_ref(),
    sa.Column("task_id", sa.String(80), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=True),
    sa.Column("created_at", TS, nullable=False),
    sa.UniqueConstraint("task_id", "kind", "uri", name="uq_artifacts_file"),
    sa.Index("ix_artifacts_job", "job_id"),
)

# Files agents uploaded to the artifact store, committed only once complete and hash-checked:
# what a download checks the stored bytes against.
artifact_objects = sa.Table(
    "artifact_objects",
    metadata,
    sa.Column("uri", sa.String(1024), primary_key=True),
    job_ref(),
    sa.Column("task_id", sa.String(80), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("agent_id", sa.String(64), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Index("ix_artifact_objects_task", "task_id", "kind"),
)

# Hyperparameter optimisation: a study asks its search algorithm for trials; each runs as a job.
studies = sa.Table(
    "studies",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("algorithm", sa.String(32), nullable=False),
    sa.Column("objective", sa.String(128), nullable=False),
    sa.Column("direction", sa.String(8), nullable=False),
    sa.Column("search_space", sa.JSON, nullable=False),
    sa.Column("settings", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("finished_at", TS, nullable=True),
    sa.Column("error", sa.Text, nullable=False, server_default=""),
    *owner_columns(),
    sa.Column("cancelled_by", sa.String(200), nullable=True),
    sa.Index("ix_studies_state", "state"),
)

trials = sa.Table(
    "trials",
    metadata,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column(
        "study_id", sa.String(64), sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("number", sa.Integer, nullable=False),
    job_ref(optional=True),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("objective_value", sa.Float, nullable=True),
    # The search algorithm's own record of the trial (hyperopt's encoding of the values).
    sa.Column("algorithm_state", sa.JSON, nullable=True),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("finished_at", TS, nullable=True),
    # How far the pruner has judged the trial (ASHA: rungs passed; median: last resource).
    sa.Column("judged", sa.Integer, nullable=False, server_default="0"),
    sa.Column("pruned_rung", sa.Integer, nullable=True),
    sa.Column("pruned_resource", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=False, server_default=""),
    sa.UniqueConstraint("study_id", "number", name="uq_trials_number"),
    sa.Index("ix_trials_job", "job_id"),
)

# Active learning: a project (labelled dataset + unlabelled pool + current model), its model
# versions and pool scorings, batches of candidates proposed for labelling with the labels given,
# and the retraining triggers its monitor fired.
al_projects = sa.Table(
    "al_projects",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    *owner_columns(),
)

model_versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "project_id",
        sa.String(64),
        sa.ForeignKey("al_projects.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("version", sa.Integer, nullable=False),
    job_ref(optional=True),
    sa.Column("trigger_id", sa.String(64), nullable=True),
    sa.Column("feedback_samples", sa.Integer, nullable=False, server_default="0"),
    sa.Column("val_accuracy", sa.Float, nullable=True),
    sa.Column("created_at", TS, nullable=False),
    sa.UniqueConstraint("project_id", "version", name="uq_model_version"),
)

al_scorings = sa.Table(
    "al_scorings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "project_id",
        sa.String(64),
        sa.ForeignKey("al_projects.id", ondelete="CASCADE"),
        nullable=False,
    ),
    job_ref(),
    sa.Column("role", sa.String(16), nullable=False),  # pool | reference
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Index("ix_al_scorings_project", "project_id"),
)

active_learning_batches = sa.Table(
    "active_learning_batches",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    job_ref("model_job_id", optional=True),
    sa.Column("strategy", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("closed_at", TS, nullable=True),
    sa.Column(
        "project_id",
        sa.String(64),
        sa.ForeignKey("al_projects.id", ondelete="CASCADE"),
        nullable=True,
    ),
    job_ref("scoring_job_id", optional=True),
    sa.Column("created_by", sa.String(200), nullable=False, server_default="unknown"),
    sa.Index("ix_al_batches_project", "project_id"),
)

active_learning_candidates = sa.Table(
    "active_learning_candidates",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "batch_id",
        sa.String(64),
        sa.ForeignKey("active_learning_batches.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("sample_id", sa.String(255), nullable=False),
    sa.Column("sample_uri", sa.Text, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("scores", sa.JSON, nullable=False),
    sa.Column("predicted_class", sa.String(128), nullable=True),
    sa.Column("label", sa.String(128), nullable=True),
    sa.Column("labelled_at", TS, nullable=True),
    sa.Column("labelled_by", sa.String(200), nullable=True),
    sa.UniqueConstraint("batch_id", "sample_id", name="uq_al_candidate"),
)

retraining_triggers = sa.Table(
    "retraining_triggers",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("details", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("fired_at", TS, nullable=False),
    job_ref(optional=True),
    sa.Column(
        "project_id",
        sa.String(64),
        sa.ForeignKey("al_projects.id", ondelete="CASCADE"),
        nullable=True,
    ),
    # What the trigger fired on (a model version, a scoring job): one trigger per kind and key.
    sa.Column("dedupe_key", sa.String(128), nullable=True),
    sa.UniqueConstraint("project_id", "kind", "dedupe_key", name="uq_trigger_key"),
    # Who fired it by hand (CheckTriggers); empty when the monitor fired it.
    sa.Column("fired_by", sa.String(200), nullable=True),
)

# Every state-changing call: who, what, from where, and whether it was allowed (never a secret).
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", TS, nullable=False),
    sa.Column("who", sa.String(200), nullable=False),
    sa.Column("token_id", sa.String(64), nullable=True),
    sa.Column("method", sa.String(128), nullable=False),
    sa.Column("targets", sa.JSON, nullable=False),
    sa.Column("peer", sa.String(200), nullable=False, server_default=""),
    sa.Column("outcome", sa.String(16), nullable=False),  # allowed | refused
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Index("ix_audit_log_time", "time"),
    sa.Index("ix_audit_log_who_time", "who", "time"),
)

# Per-token bounds on what its jobs may hold (0: no bound).
token_limits = sa.Table(
    "token_limits",
    metadata,
    sa.Column(
        "token_id", sa.String(64), sa.ForeignKey("tokens.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("max_running_tasks", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_gpus", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_queued_jobs", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_by", sa.String(200), nullable=False, server_default="unknown"),
    sa.Column("updated_at", TS, nullable=False),
)

# API tokens: only a hash of each token is stored, never the token.
tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("expires_at", TS, nullable=True),
    sa.Column("revoked_at", TS, nullable=True),
    # Permissions beyond the role, comma-separated: scripts, cancel-any.
    sa.Column("permissions", sa.String(200), nullable=False, server_default=""),
    sa.Column("created_by", sa.String(200), nullable=False, server_default="unknown"),
    sa.Column("revoked_by", sa.String(200), nullable=True),
)
