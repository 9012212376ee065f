"""A search's identity, its state in the search folder, resuming, and its kept outputs.

A search is known by its identity: the config it reads, the data and the code of its models.
Another identity starts a new search and MLflow run; the same one, unfinished, resumes from the
tuner's state without redoing finished trials; the same one, finished, writes its kept outputs
anew and searches nothing. A state that cannot be read (cut short by a full disk, or not written
by this stage) starts a new search too, as no state does (`read_state`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

import mlflow
from omegaconf import DictConfig, OmegaConf

from pipeline.core.errors import DAMAGED
from pipeline.core.files import atomic_output, sha256_of
from pipeline.models.custom import source_file
from pipeline.search.tuning import TUNER_FOLDER

# The config a search reads, all of which is part of its identity. Of `train`, only what every
# trial trains with: not the final training's epochs, stopping or hyperparameters file.
SEARCH_READS = (
    "backend", "dataset", "model", "tuner", "search_space",
    "train.batch_size", "train.lr_schedule",
)  # fmt: skip


STATE_FILE = "state.json"  # in the search folder: the search's identity, MLflow run, progress


KEPT_FOLDER = "outputs"  # in the search folder: copies of a finished search's outputs


CONFIG_PARTS = ("__init__", "base", "dataset", "model", "train", "tuner")
UNREADABLE = "unreadable"  # read_state's key for why a state could not be read


# The code that builds, trains and scores a search's models, and picks its trial: an edit to
# any of it is another search. (Plots, MLflow logging and distributed mode only describe or
# carry the trials.)
ROOT = Path(__file__).resolve().parents[2]  # where the package is, files named from there
SEARCH_CODE = (
    "pipeline.tune",
    "pipeline.search.tuning",
    "pipeline.search.space",
    "pipeline.search.results",
    "pipeline.core.selection",
    "pipeline.models.nets",
    "pipeline.models.custom",
    "pipeline.models.fitting",
    "pipeline.data.table_rows",
    "pipeline.data.splits",
    *(f"pipeline.core.config.{part}" for part in CONFIG_PARTS),
)


def search_code(cfg: DictConfig) -> list[Path]:
    """The source files of SEARCH_CODE, and of a custom model's function (model.build), found
    without importing them."""
    files = [Path(importlib.util.find_spec(name).origin) for name in SEARCH_CODE]
    build = OmegaConf.select(cfg, "model.build")
    custom = source_file(build) if build else None
    return files + ([custom] if custom is not None else [])


def search_identity(cfg: DictConfig, split_file: Path) -> dict[str, Any]:
    """What decides a search's trials and their scores: the config it reads, the data and the
    code, each as sha256 (the code per file, so that a log can say which one changed), and
    `digest`, of them all. A search folder or MLflow run of another identity is another search."""
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)

    def value_at(key: str) -> Any:
        node = resolved
        for part in key.split("."):
            node = node[part]
        return node

    searched = {key: value_at(key) for key in SEARCH_READS}
    for how in ("workers", "worker_timeout_s"):  # how trials are run changes none of them
        searched["tuner"].pop(how, None)
    parts: dict[str, Any] = {
        "config": hashlib.sha256(json.dumps(searched, sort_keys=True).encode()).hexdigest(),
        "data": sha256_of(split_file),
        "code": {os.path.relpath(path, ROOT): sha256_of(path) for path in search_code(cfg)},
    }
    parts["digest"] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return parts


def code_digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity["code"], sort_keys=True).encode()).hexdigest()


def identity_tags(identity: dict[str, Any]) -> dict[str, str]:
    """A search run's identity tags: what its workers compare theirs with."""
    return {
        "search_identity": identity["digest"],
        "search_identity.config": identity["config"],
        "search_identity.data": identity["data"],
        "search_identity.code": code_digest(identity),
    }


def why_anew(state: dict[str, Any], identity: dict[str, Any], folder: Path) -> str:
    """Why the search in a folder's state is not carried on, in words for the log and MLflow."""
    if UNREADABLE in state:
        return state[UNREADABLE]
    old = state.get("identity", {})
    if not old:
        return "its state records no identity"
    if old["digest"] == identity["digest"]:
        if state.get("finished"):
            return "the finished search's kept outputs are missing"
        broken = unreadable_tuner_file(folder)
        if broken is not None:
            return f"its tuner state {broken} is unreadable ({DAMAGED})"
        return "the interrupted search left no tuner state to resume"
    changes = [part for part in ("config", "data") if old.get(part) != identity[part]]
    old_code, code = old.get("code", {}), identity["code"]
    files = sorted(name for name in {*old_code, *code} if old_code.get(name) != code.get(name))
    if files:
        changes.append(f"code ({', '.join(files)})")
    return f"its {', '.join(changes)} changed"


def read_state(folder: Path) -> dict[str, Any]:
    """The state of the search in `folder`: {} if there is none.

    One that cannot be read (cut short, or not a state this stage wrote) is taken for none, so
    the search starts anew, as a user deleting the folder would have it do: the folder serves
    only to resume its search, and no search can be resumed from a state that cannot be read.
    The state is {UNREADABLE: why} then, for the log. The same goes for Keras Tuner's own
    files there (`unreadable_tuner_file`), which it writes in place: a full disk cuts them short.
    """
    state_file = folder / STATE_FILE
    if not state_file.exists():
        return {}
    try:
        state = json.loads(state_file.read_text())
    except ValueError:  # not JSON, or not text
        state = None
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("identity"), dict)
        or not isinstance(state["identity"].get("digest"), str)
        or not isinstance(state.get("parent_run_id"), str)
    ):
        return {UNREADABLE: f"{state_file} is unreadable ({DAMAGED})"}
    return state


def unreadable_tuner_file(folder: Path) -> Path | None:
    """The first of Keras Tuner's state files in search folder `folder` that is not JSON."""
    for path in sorted((folder / TUNER_FOLDER).rglob("*.json")):
        try:
            json.loads(path.read_text())
        except ValueError:
            return path
    return None


def can_resume(state: dict[str, Any], identity: dict[str, Any], folder: Path) -> bool:
    """Whether the folder holds an unfinished search of this identity that Keras Tuner can
    reload (it may have been killed before its first trial was saved)."""
    return (
        state.get("identity", {}).get("digest") == identity["digest"]
        and not state.get("finished")
        and (folder / TUNER_FOLDER / "oracle.json").exists()
        and unreadable_tuner_file(folder) is None
    )


def save_outputs(outputs: dict[str, Path], kept: Path) -> None:
    """Keep copies of a finished search's outputs in its folder, to write them again on a rerun
    (`dvc repro -f` deletes them but keeps the folder) without searching or touching its run."""
    with atomic_output(kept) as tmp:
        tmp.mkdir()
        for name, path in outputs.items():
            copy = shutil.copytree if path.is_dir() else shutil.copyfile
            copy(path, tmp / name)


def restore_outputs(kept: Path, outputs: dict[str, Path]) -> bool:
    """Write the kept outputs of a finished search again; False if some are missing."""
    if not all((kept / name).exists() for name in outputs):
        return False
    for name, path in outputs.items():
        with atomic_output(path) as tmp:
            copy = shutil.copytree if (kept / name).is_dir() else shutil.copyfile
            copy(kept / name, tmp)
    return True


def end_running_trial_runs(parent_run_id: str, reason: str) -> None:
    """Trial runs left RUNNING by a killed search (SIGKILL runs no handler) end as KILLED."""
    client = mlflow.MlflowClient()
    stale = mlflow.search_runs(
        filter_string=(
            f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'"
        )
    )
    for run_id in stale.get("run_id", []):
        client.set_tag(run_id, "failure_reason", reason)
        client.set_terminated(run_id, "KILLED")


def supersede(old_run_id: str, new_run_id: str, why: str) -> None:
    """End what an earlier search left RUNNING: its state is wiped, so nothing will ever finish
    it. Finished, failed or killed runs keep their status."""
    reason = f"superseded by a new search (run {new_run_id}): {why}"
    client = mlflow.MlflowClient()
    try:
        old = client.get_run(old_run_id)
    except mlflow.exceptions.MlflowException:  # a search tracked in another store
        return
    end_running_trial_runs(old_run_id, reason)
    if old.info.status == "RUNNING":
        client.set_tag(old_run_id, "failure_reason", reason)
        client.set_terminated(old_run_id, "KILLED")
