"""MLflow: the store (store), runs that end with the stage (runs), where a run came from
(context), Keras' epochs (callbacks) and logged models (logged_model).

`from pipeline import tracking` gives them all; the team server is its own command
(`python -m pipeline.tracking.team_server`, `./dev.sh team-server`).
"""

from pipeline.tracking.callbacks import (
    METRICS_FLUSH_SECONDS,
    keras_callback,
)
from pipeline.tracking.context import (
    context_tags,
    git_commit,
    hydra_sweep_tags,
)
from pipeline.tracking.logged_model import (
    log_model,
    requirements,
)
from pipeline.tracking.runs import (
    SPLIT_PARTS,
    add_to_run,
    content_digest,
    end_open_runs,
    failure_reason,
    log_split,
    require_run,
    run,
    system_metrics,
)
from pipeline.tracking.store import (
    ARTIFACTS_FOLDER,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    OWNER_HOST,
    OWNER_PID,
    OWNER_STARTED,
    PROBE_TIMEOUT_S,
    SQLITE_REFUSALS,
    STORE_ELSEWHERE,
    STORE_FILE,
    connect,
    end_orphans,
    experiment_name,
    open_sqlite_store,
    owner_tags,
    repo_root,
    runs_page,
    store_errors,
    store_failure,
    tracking_uri,
    use_experiment,
)

__all__ = [
    "ARTIFACTS_FOLDER",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "METRICS_FLUSH_SECONDS",
    "OWNER_HOST",
    "OWNER_PID",
    "OWNER_STARTED",
    "PROBE_TIMEOUT_S",
    "SPLIT_PARTS",
    "SQLITE_REFUSALS",
    "STORE_ELSEWHERE",
    "STORE_FILE",
    "add_to_run",
    "connect",
    "content_digest",
    "context_tags",
    "end_open_runs",
    "end_orphans",
    "experiment_name",
    "failure_reason",
    "git_commit",
    "hydra_sweep_tags",
    "keras_callback",
    "log_model",
    "log_split",
    "open_sqlite_store",
    "owner_tags",
    "repo_root",
    "require_run",
    "requirements",
    "run",
    "runs_page",
    "store_errors",
    "store_failure",
    "system_metrics",
    "tracking_uri",
    "use_experiment",
]
