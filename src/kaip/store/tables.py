"""Table definitions. The schema itself is created and evolved by the Alembic migrations beside this file;
these definitions are what the code queries with, and a test checks that both agree."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

resources = Table(
    "resources", metadata,
    Column("kind_key", String(255), primary_key=True),
    Column("namespace", String(253), primary_key=True),
    Column("name", String(253), primary_key=True),
    Column("uid", String(36), nullable=False, unique=True),
    Column("resource_version", BigInteger, nullable=False),
    Column("data", Text, nullable=False),
)

# Which objects each owner has, so that cascading deletion does not scan every object.
owner_refs = Table(
    "owner_refs", metadata,
    Column("owner_uid", String(36), primary_key=True),
    Column("dependent_uid", String(36), primary_key=True),
    Column("kind_key", String(255), nullable=False),
    Column("namespace", String(253), nullable=False),
    Column("name", String(253), nullable=False),
    Index("ix_owner_refs_dependent", "dependent_uid"),
)

# The change log: one row per committed write, its primary key the resourceVersion it produced.
changes = Table(
    "changes", metadata,
    Column("rv", BigInteger, primary_key=True, autoincrement=False),
    Column("type", String(16), nullable=False),
    Column("kind_key", String(255), nullable=False),
    Column("namespace", String(253), nullable=False),
    Column("name", String(253), nullable=False),
    Column("data", Text, nullable=False),
    Index("ix_changes_kind_rv", "kind_key", "rv"),
)

counters = Table(
    "counters", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

tokens = Table(
    "tokens", metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user", String(253), nullable=False),
    Column("namespace", String(253), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("description", String(512), nullable=False),
)

# ---- experiment tracking, model registry and lineage (issue 3; migration 0002) ------------------------
# Every experiment and registered model belongs to a Kaip namespace; runs carry their experiment's
# namespace too, so that searches filter without a join. Times are milliseconds since the epoch, as MLflow's.

_AutoId = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements only INTEGER PRIMARY KEY

tracking_experiments = Table(
    "tracking_experiments", metadata,
    Column("experiment_id", Integer, primary_key=True, autoincrement=True),
    Column("namespace", String(253), nullable=False),
    Column("name", String(500), nullable=False),
    Column("lifecycle_stage", String(32), nullable=False),
    Column("creation_time", BigInteger, nullable=False),
    Column("last_update_time", BigInteger, nullable=False),
    UniqueConstraint("namespace", "name", name="uq_tracking_experiments_name"),
)

tracking_experiment_tags = Table(
    "tracking_experiment_tags", metadata,
    Column("experiment_id", Integer, primary_key=True),
    Column("key", String(250), primary_key=True),
    Column("value", Text, nullable=False),
)

tracking_runs = Table(
    "tracking_runs", metadata,
    Column("run_id", String(32), primary_key=True),
    Column("experiment_id", Integer, nullable=False),
    Column("namespace", String(253), nullable=False),
    Column("name", String(250), nullable=False),
    Column("user_id", String(256), nullable=False),
    Column("status", String(20), nullable=False),
    Column("start_time", BigInteger, nullable=False),
    Column("end_time", BigInteger, nullable=True),
    Column("lifecycle_stage", String(32), nullable=False),
    Index("ix_tracking_runs_experiment", "experiment_id", "start_time"),
)

tracking_params = Table(
    "tracking_params", metadata,
    Column("run_id", String(32), primary_key=True),
    Column("key", String(250), primary_key=True),
    Column("value", Text, nullable=False),
)

tracking_run_tags = Table(
    "tracking_run_tags", metadata,
    Column("run_id", String(32), primary_key=True),
    Column("key", String(250), primary_key=True),
    Column("value", Text, nullable=False),
)

# Full metric history: every logged point.
tracking_metrics = Table(
    "tracking_metrics", metadata,
    Column("id", _AutoId, primary_key=True, autoincrement=True),
    Column("run_id", String(32), nullable=False),
    Column("key", String(250), nullable=False),
    Column("value", Float, nullable=False),
    Column("is_nan", Boolean, nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("timestamp", BigInteger, nullable=False),
    Index("ix_tracking_metrics_run_key", "run_id", "key", "step"),
)

# The latest point per (run, key) (highest step, then timestamp, then value, as MLflow orders them):
# what runs/get shows and what `metrics.x < y` filters compare.
tracking_latest_metrics = Table(
    "tracking_latest_metrics", metadata,
    Column("run_id", String(32), primary_key=True),
    Column("key", String(250), primary_key=True),
    Column("value", Float, nullable=False),
    Column("is_nan", Boolean, nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("timestamp", BigInteger, nullable=False),
    Index("ix_tracking_latest_metrics_key_value", "key", "value"),
)

# Datasets a run used (MLflow's log-inputs): name, content digest and where the data came from.
tracking_run_inputs = Table(
    "tracking_run_inputs", metadata,
    Column("run_id", String(32), primary_key=True),
    Column("name", String(500), primary_key=True),
    Column("digest", String(64), primary_key=True),
    Column("source_type", String(64), nullable=False),
    Column("source", Text, nullable=False),
    Column("context", String(500), nullable=False),
    Column("schema", Text, nullable=False),
    Column("profile", Text, nullable=False),
)

registry_models = Table(
    "registry_models", metadata,
    Column("model_id", Integer, primary_key=True, autoincrement=True),
    Column("namespace", String(253), nullable=False),
    Column("name", String(256), nullable=False),
    Column("description", Text, nullable=False),
    Column("creation_time", BigInteger, nullable=False),
    Column("last_updated_time", BigInteger, nullable=False),
    UniqueConstraint("namespace", "name", name="uq_registry_models_name"),
)

registry_model_tags = Table(
    "registry_model_tags", metadata,
    Column("model_id", Integer, primary_key=True),
    Column("key", String(250), primary_key=True),
    Column("value", Text, nullable=False),
)

registry_versions = Table(
    "registry_versions", metadata,
    Column("model_id", Integer, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("source", Text, nullable=False),
    Column("run_id", String(32), nullable=True),
    Column("run_link", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("status", String(32), nullable=False),
    Column("status_message", Text, nullable=False),
    Column("current_stage", String(32), nullable=False),
    Column("user_id", String(256), nullable=False),
    Column("creation_time", BigInteger, nullable=False),
    Column("last_updated_time", BigInteger, nullable=False),
    Index("ix_registry_versions_run", "run_id"),
)

registry_version_tags = Table(
    "registry_version_tags", metadata,
    Column("model_id", Integer, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("key", String(250), primary_key=True),
    Column("value", Text, nullable=False),
)

registry_aliases = Table(
    "registry_aliases", metadata,
    Column("model_id", Integer, primary_key=True),
    Column("alias", String(255), primary_key=True),
    Column("version", Integer, nullable=False),
)

# The lineage graph across the platform. A node's key names it (`run:<id>`, `modelversion:<ns>/<name>/<v>`,
# `dataset:<digest>`, ...); later subsystems add their own kinds of node and edge.
lineage_nodes = Table(
    "lineage_nodes", metadata,
    Column("key", String(512), primary_key=True),
    Column("kind", String(64), nullable=False),
    Column("namespace", String(253), nullable=False),
    Column("name", String(512), nullable=False),
    Column("attrs", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

lineage_edges = Table(
    "lineage_edges", metadata,
    Column("src", String(512), primary_key=True),
    Column("dst", String(512), primary_key=True),
    Column("relation", String(64), primary_key=True),
    Column("namespace", String(253), nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_lineage_edges_dst", "dst"),
)

# Every file in the artifact store, with its size and content digest.
artifact_files = Table(
    "artifact_files", metadata,
    Column("path", String(1024), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
)
