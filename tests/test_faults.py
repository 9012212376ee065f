"""Faults of the places stages write to and of the files they read: each stops the stage with
one line, `error: <path>: <what is wrong>; <what to do>`, exit 1, no traceback; nothing
half-written stays behind, and the stage's MLflow run ends FAILED with that line as its
failure_reason.

A full disk is a real 64 KiB tmpfs, a read-only folder a real read-only bind mount, both made
in a user and mount namespace of the stage's own (`unshare`): they vanish with it, need no
privileges where user namespaces are allowed, and hold for root too, whom permission bits do
not stop.

Read faults are checked in-process, on files written by the pipeline's own code.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, all_runs, compose_config, mlflow_client, stage_env
from omegaconf import DictConfig

from pipeline import models
from pipeline.core import config, files
from pipeline.core.errors import DataError
from pipeline.data.splits import Split, load_raw, load_split
from pipeline.search import space
from pipeline.search.state import STATE_FILE, can_resume, read_state, search_identity, why_anew
from pipeline.search.tuning import Setup, make_tuner, search

# Mounted by `in_mount` on its folder, $1.
MOUNTS = {
    "full": 'mount -t tmpfs -o size=64k tmpfs "$1"',
    "read-only": 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1"',
}
LEFT = "--- left in the mount:"
UNSHARE = ("unshare", "--user", "--map-root-user", "--mount")
TRAIN = (
    "experiment=circles/baseline",
    "train.epochs=1",
    "tracking.log_model=false",
    "tracking.system_metrics=false",
)
SEARCH = (
    "experiment=circles/tuned",
    "tuner.workers=1",
    "tuner=random",
    "tuner.max_trials=1",
    "tuner.max_epochs=1",
    "tuner.cv_folds=null",
    "search_space.model.family=mlp",
    "tracking.system_metrics=false",
)


@pytest.fixture(scope="session")
def mounts(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skips the test where this machine lets no process mount in a namespace of its own."""
    probe = tmp_path_factory.mktemp("mount-probe")
    for kind, mount in MOUNTS.items():
        try:
            tried = subprocess.run(
                [*UNSHARE, "sh", "-c", mount, "sh", str(probe)], capture_output=True, text=True
            )
        except FileNotFoundError:
            pytest.skip("no unshare here (util-linux): a full disk needs a tmpfs of its own")
        if tried.returncode != 0:
            pytest.skip(
                f"cannot mount a {kind} folder in a user and mount namespace here "
                f"({tried.stderr.strip()}): user namespaces are not allowed"
            )


def in_mount(
    kind: str, folder: Path, cwd: Path, *command: str, fill: bool = False
) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `command` in `cwd` with `folder` mounted `kind` (MOUNTS) for it alone; also what it
    left in `folder` before the mount went. `fill`: fill the tmpfs first, so that nothing fits."""
    folder.mkdir(parents=True, exist_ok=True)
    fill_up = 'head -c 64k /dev/zero > "$1/.fill" 2>/dev/null; ' if fill else ""
    script = (
        f'{MOUNTS[kind]} || exit 99; {fill_up}dir=$1; shift; "$@"; code=$?; '
        f'echo "{LEFT}"; find "$dir" -mindepth 1 ! -name .fill; exit $code'
    )
    result = subprocess.run(
        [*UNSHARE, "sh", "-c", script, "sh", str(folder), *command],
        cwd=cwd,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 99, f"could not mount {folder}: {result.stderr}"
    return result, result.stdout.rpartition(LEFT)[2].split()


def stage(name: str, *overrides: str) -> tuple[str, ...]:
    return (sys.executable, "-m", f"pipeline.{name}", *overrides, "hydra.run.dir=.")


def python(code: str) -> tuple[str, ...]:
    """`python -c code`, ending as a stage does on a PipelineError: its line, exit 1."""
    wrapped = (
        "import sys\nfrom pipeline.core.errors import PipelineError\ntry:\n"
        + textwrap.indent(textwrap.dedent(code), "    ")
        + "except PipelineError as error:\n    sys.exit(f'error: {error}')\n"
    )
    return (sys.executable, "-c", wrapped)


def one_line(result: subprocess.CompletedProcess) -> str:
    """The stage's error line, checked to be all it says of the failure: exit 1, no traceback."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-3000:]
    return last.removeprefix("error: ")


# ---- writing outputs -------------------------------------------------------------------------


@pytest.mark.usefixtures("mounts", "circles_split")
def test_training_onto_a_full_disk_fails_its_run_and_leaves_nothing(
    project: Path, tmp_path: Path
) -> None:
    out = tmp_path / "full"
    # A model whose file (weights and optimizer state) does not fit in the 64 KiB.
    train = stage("train", *TRAIN, "model.hidden_units=[128,128]", f"paths.outputs={out}")
    result, left = in_mount("full", out, project, *train)

    line = one_line(result)
    assert line == (
        f"{out}/models/circles/baseline: no space left on device; "
        f"free some space on {out} or set paths.outputs to another folder"
    )
    assert left == [], "neither a part of the model nor the folders made for it"
    (run,) = all_runs(mlflow_client(project))
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == line


@pytest.mark.usefixtures("mounts", "circles_split")
def test_splitting_into_a_read_only_folder_fails_in_one_line(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "read-only"
    result, left = in_mount("read-only", out, project, *stage("split", f"paths.outputs={out}"))

    assert one_line(result) == (
        f"{out}/data/split/circles.npz: the folder is read-only ({out} is mounted read-only); "
        "set paths.outputs to another folder"
    )
    assert left == []


@pytest.mark.usefixtures("mounts", "circles_split")
def test_a_search_that_fills_the_disk_stops_at_once_and_fails_its_runs(
    project: Path, tmp_path: Path
) -> None:
    out = tmp_path / "full"
    # Two layers of 128: the first trial's checkpoint alone does not fit.
    space = ("layers=[2,2]", "units=[128,128]")
    wide = [f"search_space.model.hidden_units.{value}" for value in space]
    search = stage("tune", *SEARCH, *wide, f"paths.outputs={out}")
    result, left = in_mount("full", out, project, *search)

    line = one_line(result)
    assert line == (
        f"{out}/models/circles/search/keras_tuner/trial_0/checkpoint.weights.h5: no space left "
        f"on device; free some space on {out} or set paths.outputs to another folder"
    )
    # The search's state stays, to resume from; nothing half-written, no outputs.
    assert f"{out}/models/circles/search/state.json" in left
    assert not [path for path in left if ".tmp-" in path or "checkpoint" in path]
    assert not [path for path in left if "best_hparams" in path or "/reports" in path]
    runs = {run.info.run_name: run for run in all_runs(mlflow_client(project))}
    assert set(runs) == {"circles/search", "circles/trial-0"}
    for run in runs.values():
        assert run.info.status == "FAILED"
        assert run.data.tags["failure_reason"] == line


@pytest.mark.usefixtures("mounts")
def test_a_download_onto_a_full_disk_is_one_line_naming_the_cache(tmp_path: Path) -> None:
    served = tmp_path / "served/file.gz"  # more than the 64 KiB take
    served.parent.mkdir()
    served.write_bytes(np.random.default_rng(0).bytes(200_000))
    sha256 = files.sha256_of(served)
    cache = tmp_path / "full"
    dest = cache / "downloads/file.gz"
    fetch = f"""
        from pathlib import Path
        from pipeline.data import download
        download.fetch_verified("file.gz", ["{served.parent.as_uri()}"], "{sha256}", Path("{dest}"))
    """
    result, left = in_mount("full", cache, ROOT, *python(fetch))

    assert one_line(result) == (
        f"{dest}: no space left on device; free some space on {cache} or set paths.outputs to "
        "another folder"
    )
    assert left == []


# ---- writing to the MLflow store ------------------------------------------------------------

STORE_ELSEWHERE = "set tracking.uri (or MLFLOW_TRACKING_URI) to another store"


def tracked_run(uri: str | None = None) -> tuple[str, ...]:
    """A run as a stage makes it (tracking.run), logging an artifact, in store `uri` (None: the
    repository's): seconds, where a train stage would first import Keras."""
    return python(f"""
        import mlflow
        from pipeline import tracking
        tracking.use_experiment("circles", {uri!r})
        with tracking.run("circles/baseline", {{}}):
            mlflow.log_text("logged", "config.yaml")
    """)


@pytest.mark.usefixtures("mounts")
def test_an_mlflow_store_on_a_full_disk_fails_in_one_line_naming_it(
    project: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    uri = f"sqlite:///{store}/mlflow.db"
    result, _ = in_mount("full", store, project, *tracked_run(uri), fill=True)

    assert one_line(result) == (
        f"{store}/mlflow.db: no space left on device; free some space on {store} or "
        f"{STORE_ELSEWHERE}"
    )


@pytest.mark.usefixtures("mounts", "circles_split")
def test_training_into_a_read_only_mlflow_store_fails_in_one_line_naming_it(
    project: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    mlflow_client(store).search_experiments()  # a store with its tables, read-only below
    train = stage("train", *TRAIN, f"tracking.uri=sqlite:///{store}/mlflow.db")
    result, _ = in_mount("read-only", store, project, *train)

    assert one_line(result) == (
        f"{store}/mlflow.db: the folder is read-only ({store} is mounted read-only); "
        f"{STORE_ELSEWHERE}"
    )
    assert not (project / "models").exists()


@pytest.mark.usefixtures("mounts")
def test_an_artifact_store_on_a_full_disk_fails_the_run_naming_it(project: Path) -> None:
    artifacts = project / "mlartifacts"  # beside the project's mlflow.db, which has room
    result, _ = in_mount("full", artifacts, project, *tracked_run(), fill=True)

    line = one_line(result)
    assert line == (
        f"{artifacts}: no space left on device; free some space on {artifacts} or {STORE_ELSEWHERE}"
    )
    (run,) = all_runs(mlflow_client(project))
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == line


# ---- reading -----------------------------------------------------------------------------

DAMAGED = "(truncated or written by something else)"


def damage(path: Path, how: str) -> None:
    """Do to file `path` what a fault does: cut it short (a full disk, a copy killed part way),
    put another kind of file in its place, or delete it."""
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: min(300, path.stat().st_size // 2)])
    elif how == "cut at a line end":  # text that still parses, to less of it
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[:-1]))
    elif how == "foreign":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    elif how == "missing":
        path.unlink()
    else:
        raise ValueError(how)


def not_a(path: Path, what: str, stage_name: str) -> str:
    return f"{path}: not {what} {DAMAGED}; run `dvc repro {stage_name}` to make it again"


def no_such(path: Path, stage_name: str) -> str:
    return f"{path}: no such file; run `dvc repro {stage_name}` to make it"


def data_error(read: Callable[..., object], *args: object) -> str:
    """What `read(*args)` says, as the DataError it must raise."""
    with pytest.raises(DataError) as caught:
        read(*args)
    return str(caught.value)


@pytest.mark.parametrize("how", ["truncated", "foreign", "other arrays", "missing"])
@pytest.mark.parametrize("kind", ["split", "raw"])
def test_a_damaged_split_or_raw_file_is_one_line(circles_split: Path, kind: str, how: str) -> None:
    raw = circles_split.parents[1] / "raw/circles.npz"
    path, other = (circles_split, raw) if kind == "split" else (raw, circles_split)
    if how == "other arrays":  # a .npz of another kind: the raw file in the split's place
        shutil.copyfile(other, path)
    else:
        damage(path, how)

    if kind == "split":
        message = data_error(load_split, path)
        what, stage_name = "a split file", "split@circles"
    else:
        message = data_error(load_raw, path, "circles")
        what, stage_name = "a raw data file", "fetch@circles"
    expected = no_such(path, stage_name) if how == "missing" else not_a(path, what, stage_name)
    assert message == expected


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/circles/ as train leaves it: a Keras baseline and a scikit-learn logreg, each with
    its run.json and history.csv."""
    root = tmp_path_factory.mktemp("trained") / "models/circles"
    x = np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.uint8)
    spec = models.Inputs((2,))
    sklearn = config.ModelConfig(family=config.Family.sklearn_logreg)
    nets = {
        "baseline": models.build_keras(config.ModelConfig(hidden_units=[4]), spec, 2),
        "logreg": models.build_sklearn(sklearn, spec, 20, 0).fit(x, y),
    }
    nets["baseline"].fit(x, y, epochs=1, verbose=0)  # so that it has an optimizer state
    history = pd.DataFrame(
        {"epoch": [1, 2], "loss": [0.7, 0.6], "accuracy": [0.5, 0.6]}
        | {"val_loss": [0.7, 0.65], "val_accuracy": [0.5, 0.55]}
    )
    for variant, net in nets.items():
        folder = root / variant
        folder.mkdir(parents=True)
        models.save(net, folder)
        history.to_csv(folder / "history.csv", index=False)
        files.write_json(folder / "run.json", {"run_id": "0" * 32, "epochs_trained": 2})
    return root


def read_model_folder(folder: Path) -> None:
    """Read model folder `folder` whole, as evaluate does: the history as long as run.json says
    training went."""
    models.load(folder)
    epochs = models.read_run(folder)["epochs_trained"]
    models.read_history(folder / "history.csv", f"train@circles-{folder.name}", epochs)


# The files of a model folder: the variant that has it, and what it should be.
MODEL_FILES = {
    "model.keras": ("baseline", "a saved Keras model"),
    "model.joblib": ("logreg", "a saved model"),
    "run.json": ("baseline", "a trained model's run file"),
    "history.csv": ("baseline", "a training history"),
}


@pytest.mark.parametrize(
    ("name", "how"),
    [(name, how) for name in MODEL_FILES for how in ("truncated", "foreign", "missing")]
    + [("history.csv", "cut at a line end")],  # only a CSV parses cut short, to fewer epochs
)
def test_a_damaged_model_folder_is_one_line(
    trained: Path, tmp_path: Path, name: str, how: str
) -> None:
    variant, what = MODEL_FILES[name]
    folder = tmp_path / "models/circles" / variant
    shutil.copytree(trained / variant, folder)
    damage(folder / name, how)

    stage_name = f"train@circles-{variant}"
    if how != "missing":
        expected = not_a(folder / name, what, stage_name)
    elif name.startswith("model."):
        expected = f"{folder}: holds no trained model; run `dvc repro {stage_name}` to make it"
    else:
        expected = no_such(folder / name, stage_name)
    assert data_error(read_model_folder, folder) == expected


@pytest.mark.parametrize("how", ["cut at a line end", "foreign", "missing"])
def test_a_damaged_hyperparameters_file_is_one_line(tmp_path: Path, how: str) -> None:
    paths = (f"paths.inputs={tmp_path}", f"paths.outputs={tmp_path}")
    cfg = compose_config(overrides=("experiment=circles/tuned", *paths))
    path = tmp_path / "models/circles/best_hparams.yaml"
    values = {"model": {"dropout": 0.1, "hidden_units": [16, 32]}, "train": {"batch_size": 8}}
    # As tune writes it: a header, then the values sealed with their sha256.
    files.write_text(path, "# Best of 3 trials.\n" + files.sealed(yaml.safe_dump(values)))
    assert models.with_hparams(cfg).model.hidden_units == [16, 32]

    damage(path, how)
    expected = {
        "cut at a line end": (
            f"{path}: its values do not match the sha256 line above them (truncated, or edited "
            "by hand); run `dvc repro tune@circles` to make it again, or delete that line to "
            "keep an edit"
        ),
        "foreign": not_a(path, "a hyperparameters file", "tune@circles"),
        "missing": no_such(path, "tune@circles"),
    }[how]
    assert data_error(models.with_hparams, cfg) == expected


@dataclass
class Search:
    """A search folder and what `tune` reads with it."""

    settings: config.Config
    cfg: DictConfig
    data: Split
    folder: Path
    identity: dict

    def resumes(self) -> bool:
        """Whether `tune` would resume this search (and Keras Tuner reload it)."""
        state = read_state(self.folder)
        if not can_resume(state, self.identity, self.folder):
            return False
        params = space.parse(self.settings.search_space)
        make_tuner(
            Setup(self.settings, self.cfg, params, self.data, self.folder), resume=True, track=False
        )
        return True

    def why_anew(self) -> str:
        return why_anew(read_state(self.folder), self.identity, self.folder)


@pytest.fixture(scope="module")
def search_folder(tmp_path_factory: pytest.TempPathFactory, circles_data: Path) -> Path:
    """The folder of a one-trial search by the real tuner, searched once for the tests here."""
    cfg = compose_config(overrides=SEARCH)
    settings = config.load(cfg)
    folder = tmp_path_factory.mktemp("search") / "search"
    data = load_split(circles_data / "split/circles.npz")
    params = space.parse(settings.search_space)
    search(Setup(settings, cfg, params, data, folder), resume=False, track=False)
    return folder


@pytest.fixture
def searched(search_folder: Path, circles_data: Path, tmp_path: Path) -> Search:
    """A copy of `search_folder` with the state `tune` gives a search while it runs: one to
    resume."""
    cfg = compose_config(overrides=SEARCH)
    split_file = circles_data / "split/circles.npz"
    identity = search_identity(cfg, split_file)
    search = Search(config.load(cfg), cfg, load_split(split_file), tmp_path, identity)
    shutil.copytree(search_folder, search.folder, dirs_exist_ok=True)
    state = {"identity": identity, "parent_run_id": "0" * 32, "finished": False}
    files.write_json(search.folder / STATE_FILE, state)
    return search


@pytest.mark.parametrize("how", ["truncated", "foreign"])
def test_a_damaged_search_state_starts_the_search_anew_saying_why(
    searched: Search, how: str
) -> None:
    assert searched.resumes()
    for path in (
        searched.folder / "keras_tuner/trial_0/trial.json",
        searched.folder / "state.json",
    ):
        damage(path, how)
        assert not searched.resumes(), path
        assert searched.why_anew().endswith(f"{path} is unreadable {DAMAGED}")


def test_tuner_state_that_is_json_but_not_keras_tuners_is_one_line(searched: Search) -> None:
    project = searched.folder / "keras_tuner"
    (project / "oracle.json").write_text("{}")

    assert data_error(searched.resumes) == (
        f"{project}: not the state of a Keras Tuner search {DAMAGED}; "
        f"delete {searched.folder} to start the search anew"
    )
