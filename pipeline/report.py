"""Stage report: reports/README.md, every task's tutorial baseline against its tuned model.

    python -m pipeline.report

Every number comes from the MLflow store (`mlflow.search_runs`, for the runs named in each
models/<task>/<variant>/run.json) or from the stage outputs; the figures are PNGs beside it.
Each task's best model (by validation accuracy: the test part picks nothing) is registered in
the MLflow model registry under the task's name, with the alias `champion`, and copied to
champions/<task>/ (dvc.yaml's `artifacts:`); reports/metrics.json holds each champion's test
accuracy, the headline a `dvc exp show` table compares.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from pipeline import models, tracking
from pipeline.core import backend, config, selection
from pipeline.core.cli import stage
from pipeline.core.files import atomic_output, sha256_of, write_json, write_text
from pipeline.data.checks import read_summary
from pipeline.data.splits import load_split
from pipeline.reporting import plots
from pipeline.reporting.champion import best_run, register_best
from pipeline.reporting.data import data_lines

log = logging.getLogger(__name__)


# Report column -> column of mlflow.search_runs' frame.
COLUMNS = {
    "test accuracy": "metrics.test_accuracy",
    "macro F1": "metrics.test_f1_macro",
    "test loss": "metrics.test_loss",
    "parameters": "metrics.param_count",
    "train time (s)": "metrics.train_seconds",
    "epochs": "metrics.epochs_trained",
}


def task_runs(task: str, experiment: str, models_dir: Path) -> pd.DataFrame:
    """The MLflow runs behind the task's current models, one row per variant."""
    run_ids = {
        folder.name: models.read_run(folder)["run_id"]
        for folder in sorted(models_dir.glob(f"{task}/*"))
        if (folder / models.RUN_FILE).exists()
    }
    if not run_ids:
        return pd.DataFrame()
    quoted = ", ".join(f"'{run_id}'" for run_id in run_ids.values())
    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"attributes.run_id IN ({quoted})",
    )
    runs["variant"] = runs["run_id"].map({v: k for k, v in run_ids.items()})
    return runs.sort_values("variant", key=lambda v: v.map(_variant_order)).reset_index(drop=True)


def _variant_order(variant: str) -> tuple[int, str]:
    return (1 if variant == "tuned" else 0, variant)  # baselines first, the searched model last


def results_table(runs: pd.DataFrame, n_test: int) -> pd.DataFrame:
    """One row per model; test accuracy with its standard error on the `n_test` test samples:
    what a rerun on another machine or with another seed may move it by and still agree."""
    table = pd.DataFrame({"model": runs["variant"]})
    for column, source in COLUMNS.items():
        table[column] = runs.get(source)
    table.insert(
        2,
        "± 1 SE",
        [
            selection.standard_error(accuracy, n_test) if pd.notna(accuracy) else None
            for accuracy in table["test accuracy"]
        ],
    )
    for column in ("parameters", "epochs"):
        table[column] = table[column].astype("Int64")
    if "metrics.cv_accuracy_mean" in runs:
        table["k-fold accuracy"] = [
            f"{mean:.4f} ± {std:.4f}" if pd.notna(mean) else ""
            for mean, std in zip(
                runs["metrics.cv_accuracy_mean"], runs["metrics.cv_accuracy_std"], strict=True
            )
        ]
    table["MLflow run"] = runs["run_id"].str[:12]
    return table


def search_line(pick_file: Path) -> str:
    """What the task's search picked, and which trials tied with it (its pick.json)."""
    if not pick_file.exists():
        return "No search."
    pick = json.loads(pick_file.read_text())
    others = [t for t in pick["tied"] if t != pick["trial_id"]]
    return (
        f"The search picked trial {pick['trial_id']} of {pick['trials']} (score "
        f"{pick['score']:.4f}, {pick['param_count']:,} parameters); tied with it: "
        f"{', '.join(others) or 'none'}. {pick['rule']}."
    )


def machines(runs: pd.DataFrame) -> list[str]:
    """Where the runs computed, one line per distinct machine (CPU, instruction sets, threads,
    determinism, libraries): the figures repeat to the last digit only on the same."""
    keys = [f"tags.{key}" for key in backend.MACHINE_TAGS]
    present = runs[[k for k in keys if k in runs]].dropna(how="all").drop_duplicates()
    return [
        ", ".join(
            f"{key.removeprefix('tags.')} {row[key]}" for key in present if pd.notna(row[key])
        )
        for _, row in present.iterrows()
    ]


def task_section(
    task: str, settings: config.ReportConfig, figures: Path, champions: Path
) -> tuple[str, pd.DataFrame, pd.Series | None]:
    """The task's part of the report, the runs it reports and the champion's run (None before
    evaluate scored them); the champion's model folder is copied into `champions`/<task>."""
    tracking_cfg = settings.tracking
    experiment = tracking.use_experiment(task, tracking_cfg.uri, tracking_cfg.experiment_prefix)
    read = settings.paths.read
    runs = task_runs(task, experiment, read.path("models"))
    if runs.empty:
        return f"## {task}\n\nNo trained model yet.\n", runs, None
    with np.load(read.split_file(task)) as split:
        n_val, n_test = len(split["y_val"]), len(split["y_test"])
    table = results_table(runs, n_test)
    digits = [".1f" if column == "train time (s)" else ".4f" for column in table.columns]
    lines = [f"## {task}", "", *data_lines(read_summary(read.split_file(task), f"split@{task}"))]
    lines += [table.to_markdown(index=False, floatfmt=digits), ""]
    ui = tracking.runs_page(runs["experiment_id"].iloc[0], "tags.stage = 'train'")
    lines += [f"Its training runs in the MLflow UI: <{ui}>", ""]
    lines += [search_line(read.report_dir(task, "search") / "pick.json"), ""]
    best = None
    if "metrics.final_val_accuracy" in runs:
        best, tolerance = best_run(runs, n_val)
        shutil.copytree(read.model_dir(task, best["variant"]), champions / task)
        if settings.register_models:
            lines += [register_best(experiment, best, tolerance, n_val), ""]

    curve_files = {
        variant: read.report_dir(task, variant) / "learning_curve.csv"
        for variant in runs["variant"]
    }
    histories = {
        variant: models.read_history(path, models.stage_of("evaluate", task, variant))
        for variant, path in curve_files.items()
        if path.exists()
    }
    curves = figures / f"{task}_learning_curves.png"
    plots.learning_curves(histories, curves, f"{task}: learning curves")

    def link(path: Path) -> str:
        """`path` as seen from the report, which may be written elsewhere than it reads."""
        return os.path.relpath(path.resolve(), settings.paths.write.reports.resolve())

    # Links point where the figures folder lands, not at the temporary one being written.
    images = [("learning curves", Path("figures") / curves.name)]
    for variant in runs["variant"][::-1]:  # the searched model's matrix first
        matrix = read.report_dir(task, variant) / "figures" / "confusion_matrix.png"
        if matrix.exists():
            images.append((f"confusion matrix, {variant}", link(matrix)))
            break
    for name, title in (
        ("best_so_far", "search progress"),
        ("score_by_hyperparameter", "score by hyperparameter"),
    ):
        searched = read.report_dir(task, "search") / "figures" / f"{name}.png"
        if searched.exists():
            images.append((title, link(searched)))
    tuned_dir = read.model_dir(task, "tuned")
    if task == "circles" and tuned_dir.exists():
        data = load_split(read.split_file(task))
        net = models.load(tuned_dir)
        boundary = figures / f"{task}_decision_boundary.png"
        plots.decision_boundary(net, data.x_test, data.y_test, boundary, "tuned model, test points")
        images.append(("decision boundary", Path("figures") / boundary.name))
    lines += [f"![{title}]({path})" for title, path in images]
    return "\n".join(lines) + "\n", runs, best


@stage("report", reads=("tasks", "register_models", "tracking", "paths"))
def main(cfg: DictConfig) -> None:
    settings: config.ReportConfig = config.load(cfg)
    read, reports = settings.paths.read, settings.paths.write.reports
    split_files = sorted(read.path("data", "split").glob("*.npz"))
    header = [
        "# Results",
        "",
        "Written by the `report` stage of `dvc repro` from the MLflow store and the stage outputs;",
        "do not edit. Test parts are scored once, by `evaluate`; k-fold accuracy (small data sets)",
        "refits the final configuration on stratified folds of all samples. A test accuracy's",
        "standard error (± 1 SE) is how far a rerun on another machine, or with another seed, may",
        "move it by chance: figures repeat to the last digit only on the same machine, backend and",
        "thread count, with determinism on.",
        "",
        f"- code: git commit `{tracking.git_commit()}`",
        *[f"- data: `data/split/{path.name}` sha256 `{sha256_of(path)}`" for path in split_files],
    ]
    sections, reported, headline = [], [], {}
    with (
        atomic_output(reports / "figures") as figures,
        atomic_output(settings.paths.write.champions) as champions,
    ):
        figures.mkdir()
        champions.mkdir()
        for task in settings.tasks or config.pipeline_tasks():
            section, runs, champion = task_section(task, settings, figures, champions)
            sections.append(section)
            reported.append(runs)
            if champion is not None:
                headline[task] = float(champion["metrics.test_accuracy"])
    header += [f"- machine: {line}" for line in machines(pd.concat(reported))] + [""]
    write_json(reports / "metrics.json", {"champion": headline})
    write_text(reports / "README.md", "\n".join(header + sections))
    log.info("wrote %s", reports / "README.md")


if __name__ == "__main__":
    main()
