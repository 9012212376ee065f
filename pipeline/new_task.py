"""Add a task of one's own data, by config alone: a folder of images or a table.

    python -m pipeline.new_task name=photos kind=image_folder path=~/photos
    python -m pipeline.new_task name=flowers kind=image_folder url=https://.../f.tar.gz sha256=...
    python -m pipeline.new_task name=penguins kind=table path=penguins.csv label=species
    python -m pipeline.new_task name=photos ... build=src.nets:small_cnn   # a model of one's own

Reads and checks the data as `fetch` will (every image decoded, every column typed), then writes
the task's conf files, each a starting point to edit: conf/source/<name>.yaml (the kind and
what it found: colour, column types), conf/dataset/<name>.yaml (the split), a baseline
(conf/experiment/<name>/baseline.yaml, unless baseline=false) and a searched preset
(conf/search/<name>.yaml, conf/experiment/<name>/tuned.yaml) suited to the kind, and its
entries in conf/tasks.yaml (with k-fold cross-validation where the test part is under 100
samples, unless crossval=false). The next `dvc repro` fetches, splits, searches, trains, evaluates,
reports and registers it. A name already taken is refused, and nothing is written unless all is.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.config import DVC_FILE, TASKS_FILE, Color, Kind, source_of
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.core.files import all_or_none, write_text
from pipeline.core.task_list import refuse_taken, with_entries
from pipeline.data.checks import per_class_need, require_per_class
from pipeline.data.sources import fetch

USAGE = (
    "usage: python -m pipeline.new_task name=<task> kind=image_folder|table "
    "path=<folder or file> | url=<URL> sha256=<its SHA-256> [label=<column> (tables)] "
    "[image_size=64] [build=<module>:<function>] [baseline=false] [crossval=true|false]"
)
OPTIONS = {
    "name", "kind", "path", "url", "sha256", "label", "image_size", "build", "baseline",
    "crossval",
}  # fmt: skip
GRAYSCALE = {"1", "L", "LA", "I", "I;16", "F"}  # Pillow's modes of one channel
VAL, TEST = 0.15, 0.15
SMALL = 100  # a test part of fewer samples says little: the task is also scored by k folds
FOLDS = 5

IMAGE_PRESETS = {
    "model": "cnn",
    "space": "image",
    "tuner": "hyperband",
    "baseline": "filters: [16, 32]\n  dense_units: 64\n  dropout: 0.25",
    "search": "tuner:\n  max_epochs: 10\n  factor: 3\n  early_stopping_patience: 3\n",
    "epochs": 20,
}
TABLE_PRESETS = {
    "model": "mlp",
    "space": "table",
    "tuner": "bayesian",
    "baseline": "hidden_units: [32, 16]",
    "search": "tuner:\n  max_trials: 10\n  max_epochs: 50\n  early_stopping_patience: null\n",
    "epochs": 50,
}


def parse(argv: list[str]) -> dict[str, str]:
    options = dict(arg.split("=", 1) for arg in argv if "=" in arg)
    unknown = sorted(set(options) - OPTIONS) + [arg for arg in argv if "=" not in arg]
    if unknown or not {"name", "kind"} <= set(options):
        raise PipelineError(f"{'unknown ' + unknown[0] + '; ' if unknown else ''}{USAGE}")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", options["name"]):
        raise ConfigError(
            f"name={options['name']}: a task's name is lowercase letters, digits and _, "
            "starting with a letter (it names files, stages and the MLflow experiment)"
        )
    if options["kind"] not in (Kind.image_folder.value, Kind.table.value):
        raise ConfigError(
            f"kind={options['kind']}: new_task adds image_folder or table tasks; for idx and "
            "sklearn sources, write conf/source/<name>.yaml (docs/own-data.md)"
        )
    return options


def source_section(options: dict[str, str]) -> dict[str, Any]:
    section: dict[str, Any] = {"kind": options["kind"], "name": options["name"]}
    for key in ("path", "url", "sha256", "label"):
        if key in options:
            section[key] = options[key]
    if "path" in options and options["path"].startswith("~"):
        section["path"] = str(Path(options["path"]).expanduser())
    if options["kind"] == Kind.image_folder.value:
        section["image_size"] = int(options.get("image_size", 64))
    elif "label" not in options:
        raise ConfigError("kind=table needs label=<the column of classes>")
    return section


def checked(section: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The source section completed with what the data show, and their summary: fetch's own
    reading and checks, without writing anything."""
    fetched = fetch(source_of(section), Path("data") / "downloads", mirror=None)
    summary = fetched.summary
    if section["kind"] == Kind.image_folder.value:
        modes = summary["images"]["modes"]
        gray = sum(count for mode, count in modes.items() if mode in GRAYSCALE)
        section["color"] = (Color.grayscale if gray * 2 > sum(modes.values()) else Color.rgb).value
    else:
        section["features"] = {name: column["type"] for name, column in summary["columns"].items()}
    y = fetched.arrays["y"]
    class_names = [str(name) for name in fetched.arrays["class_names"]]
    cut = {part: share for part, share in (("val", VAL), ("test", TEST))
           if f"x_{part}" not in fetched.arrays}  # fmt: skip
    if cut:
        parts = " and ".join(f"{part} {share}" for part, share in cut.items())
        why = f"cutting {parts} of it (conf/dataset/{section['name']}.yaml)"
        require_per_class(y, class_names, per_class_need(list(cut.values())), why)
    return section, summary


def task_files(options: dict[str, str], section: dict[str, Any], summary: dict[str, Any]) -> dict:
    """{path: text} of the task's conf files, and its entries for conf/tasks.yaml."""
    name, image = options["name"], section["kind"] == Kind.image_folder.value
    presets = IMAGE_PRESETS if image else TABLE_PRESETS
    given_test = "test" in summary.get("parts", {})
    n_test = summary["parts"]["test"] if given_test else round(summary["samples"] * TEST)
    build = options.get("build")
    model, code = (
        (name, _code_of(build)) if build else (presets["model"], "pipeline/models/nets.py")
    )
    files = {
        f"source/{name}.yaml": _source_yaml(section, summary),
        f"dataset/{name}.yaml": (
            f"# The task {name}: its data (conf/source/{name}.yaml) and how it is split.\n"
            f"name: {name}\nsource: {name}\nstandardize: {str(not image).lower()}\n"
            f"split:\n  val_fraction: {VAL}\n  test_fraction: {TEST}\n  seed: 0\n"
        ),
        f"search/{name}.yaml": (
            f"# @package _global_\n# The search of {name}, everything `tune` reads (the final "
            f"training is conf/experiment/{name}/tuned.yaml).\ndefaults:\n"
            f"  - override /dataset: {name}\n"
            f"  - override /model: {model}\n  - override /tuner: {presets['tuner']}\n"
            f"  - override /search_space: {name if build else presets['space']}\n\n"
            + presets["search"]
        ),
        f"experiment/{name}/tuned.yaml": (
            f"# @package _global_\n# The search's pick for {name}, trained on all of the training "
            f"part.\ndefaults:\n  - override /search: {name}\n\nvariant: tuned\ntrain:\n"
            f"  epochs: {presets['epochs']}\n  early_stopping_patience: 5\n"
            "  hparams_file: models/${dataset.name}/best_hparams.yaml\n"
        ),
    }
    if options.get("baseline", "true") != "false":
        files[f"experiment/{name}/baseline.yaml"] = (
            f"# @package _global_\n# The baseline of {name}: a starting point to edit.\n"
            "defaults:\n"
            f"  - override /dataset: {name}\n  - override /model: {model}\n\nvariant: baseline\n"
            + ("" if build else f"model:\n  {presets['baseline']}\n")
            + f"train:\n  epochs: {presets['epochs']}\n"
        )
    if build:
        files[f"model/{name}.yaml"] = (
            f"# {name}'s own model: {build}(params, inputs, n_classes) builds it.\n"
            f"family: custom\nbuild: {build}\nparams: {{}}  # what the function reads\n"
        )
        files[f"search_space/{name}.yaml"] = (
            f"# What {name}'s search varies: add the function's own keys as model.params.<key>,\n"
            "# e.g. params: {units: {choice: [16, 64]}}.\nmodel:\n  optimizer:\n    name: adam\n"
            "    lr: {min: 3.0e-4, max: 3.0e-3, log: true}\ntrain:\n"
            "  batch_size: {choice: [16, 32, 64]}\n"
        )
    data = section.get("path") or f"conf/source/{name}.yaml"
    entries = {
        "sources": f"{name}: {{data: {data}}}",
        "tasks": f"{name}: {{source: {name}}}",
        "searched": f"{name}: {{model: {model}, space: {name if build else presets['space']}, "
        f"tuner: {presets['tuner']}, code: {code}}}",
    }
    if f"experiment/{name}/baseline.yaml" in files:
        entries["baselines"] = (
            f"{name}-baseline: {{task: {name}, variant: baseline, model: {model}, code: {code}}}"
        )
    if options.get("crossval", str(n_test < SMALL).lower()) == "true":
        entries["crossvalidated"] = f"{name}: {{model: {model}, code: {code}}}"
    return {"files": files, "entries": entries}


def _code_of(build: str) -> str:
    from pipeline.models.custom import source_file

    path = source_file(build)
    if path is None or not path.resolve().is_relative_to(Path.cwd().resolve()):
        raise ConfigError(
            f"build={build}: its module is not a file of this repository; put it under src/ "
            "so that DVC tracks it"
        )
    return path.resolve().relative_to(Path.cwd().resolve()).as_posix()


def _source_yaml(section: dict[str, Any], summary: dict[str, Any]) -> str:
    found = f"{summary['samples']:,} samples in {len(summary['classes'])} classes"
    body = yaml.safe_dump(section, sort_keys=False, default_flow_style=False)
    return f"# {section['name']}: {found}, as new_task found it. Edit as you see fit.\n{body}"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        print(f"{USAGE}\n\n{__doc__}")
        return
    try:
        options = parse(argv)
        conf = TASKS_FILE.parent
        refuse_taken(options["name"], conf)
        section, summary = checked(source_section(options))
        made = task_files(options, section, summary)
        tasks = with_entries(TASKS_FILE.read_text(), made["entries"])
        # DVC expands no foreach in artifacts:, so the champion is declared by name.
        champion = (
            f"{options['name']}:\n    path: champions/{options['name']}\n    type: model\n"
            f"    desc: \"{options['name']}: the report's champion, by validation accuracy "
            f'(in MLflow: models:/{options["name"]}@champion)"'
        )
        dvc_yaml = DVC_FILE.read_text()
        paths = [conf / path for path in made["files"]]
        taken = [str(path) for path in paths if path.exists()]
        if taken:
            raise ConfigError(f"{taken[0]} exists already; remove it, or pick another name")
        # Whole or not at all: a failure leaves no new file and the two edited ones as they were.
        with all_or_none(*paths, restore=(DVC_FILE, TASKS_FILE)):
            for path, text in zip(paths, made["files"].values(), strict=True):
                write_text(path, text)
            write_text(DVC_FILE, with_entries(dvc_yaml, {"artifacts": champion}))
            write_text(TASKS_FILE, tasks)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    for path in paths:
        print(f"wrote {path}")
    print(f"added {options['name']} to {TASKS_FILE}: {', '.join(made['entries'])}")
    print(f"added its champion to {DVC_FILE}'s artifacts")
    print(f"data: {summary['samples']:,} samples, classes {summary['classes']}")
    print("next: ./dev.sh repro   (or first ./dev.sh dvc status to see the new stages)")


if __name__ == "__main__":
    main()
