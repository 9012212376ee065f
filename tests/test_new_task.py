"""`python -m pipeline.new_task`: a task of one's own data from one command, its conf files and
conf/tasks.yaml entries written whole or not at all. The end-to-end repro
(tests/test_pipeline.py) runs the tasks it adds."""

from __future__ import annotations

import errno
import hashlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import stage_env
from test_download import Server
from tiny_data import write_image_folder, write_table

from pipeline import new_task as new_task_module
from pipeline.core.config import TASKS_FILE
from pipeline.core.task_list import with_entries


def new_task(repo: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.new_task", *options],
        cwd=repo, env=stage_env(), capture_output=True, text=True,
    )  # fmt: skip


def conf_files(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in (repo / "conf").rglob("*.yaml")}


def test_a_folder_becomes_a_task_and_its_name_is_then_taken(project: Path) -> None:
    write_image_folder(project / "own/photos", per_class=12)

    added = new_task(project, "name=photos", "kind=image_folder", "path=own/photos")

    assert added.returncode == 0, added.stderr
    tasks = yaml.safe_load((project / "conf/tasks.yaml").read_text())
    assert tasks["sources"]["photos"] == {"data": "own/photos"}
    assert tasks["tasks"]["photos"] == {"source": "photos"}
    assert tasks["searched"]["photos"]["space"] == "image"
    assert tasks["baselines"]["photos-baseline"]["variant"] == "baseline"
    assert "photos" in tasks["crossvalidated"]  # a test part of 5 images says little alone
    source = yaml.safe_load((project / "conf/source/photos.yaml").read_text())
    assert source["kind"] == "image_folder" and source["color"] == "grayscale"  # 35 of 36
    for path in ("dataset/photos.yaml", "search/photos.yaml", "experiment/photos/tuned.yaml"):
        assert (project / "conf" / path).exists(), path
    # Its champion is a DVC artifact, as the tutorial tasks' are.
    artifacts = yaml.safe_load((project / "dvc.yaml").read_text())["artifacts"]
    assert artifacts["photos"] == {
        "path": "champions/photos",
        "type": "model",
        "desc": "photos: the report's champion, by validation accuracy (in MLflow: "
        "models:/photos@champion)",
    }
    assert {"mnist", "circles"} <= set(artifacts)
    # The file's comments stay, and the tutorial tasks' entries are untouched.
    assert (project / "conf/tasks.yaml").read_text().startswith("# The tasks the pipeline runs")

    before = conf_files(project)
    again = new_task(project, "name=photos", "kind=image_folder", "path=own/photos")
    assert again.returncode == 1
    assert again.stderr.startswith("error: name=photos is taken (conf/tasks.yaml sources")
    assert len(again.stderr.strip().splitlines()) == 1
    assert conf_files(project) == before


@pytest.mark.parametrize("given", ["parquet", "url"])
def test_a_parquet_file_or_a_table_by_url_becomes_a_task(project: Path, given: str) -> None:
    """A Parquet file by its path; a CSV by its URL and checksum, from a loopback HTTP server."""
    write_table(project / "own/iris.csv", rows=60)
    server = Server()
    if given == "parquet":
        pd.read_csv(project / "own/iris.csv").to_parquet(project / "own/iris.parquet")
        where = ("path=own/iris.parquet",)
    else:
        table = (project / "own/iris.csv").read_bytes()
        server.files["/iris.csv"] = table
        server.start()
        where = (f"url={server.url}/iris.csv", f"sha256={hashlib.sha256(table).hexdigest()}")
    try:
        added = new_task(project, "name=mine", "kind=table", *where, "label=species")
    finally:
        server.stop()

    assert added.returncode == 0, added.stderr
    source = yaml.safe_load((project / "conf/source/mine.yaml").read_text())
    assert source["kind"] == "table" and source["label"] == "species"
    assert source["features"]["pot"] == "category"
    assert source["features"]["petal_length"] == "number"
    if given == "url":
        assert source["url"] == f"{server.url}/iris.csv" and server.requests == ["/iris.csv"]
    assert "mine" in yaml.safe_load((project / "conf/tasks.yaml").read_text())["tasks"]


def test_a_failure_at_the_last_write_leaves_every_file_as_it_was(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """conf/tasks.yaml is written last, after dvc.yaml's new artifact: a full disk then puts
    dvc.yaml back and removes the new conf files."""
    write_image_folder(project / "own/photos", per_class=12)
    monkeypatch.chdir(project)
    before = conf_files(project), (project / "dvc.yaml").read_bytes()
    write_text = new_task_module.write_text

    def full_disk_at_the_task_list(path: Path, text: str) -> None:
        if Path(path) == TASKS_FILE:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write_text(path, text)

    monkeypatch.setattr(new_task_module, "write_text", full_disk_at_the_task_list)
    with pytest.raises(OSError, match="No space left"):
        new_task_module.main(["name=photos", "kind=image_folder", "path=own/photos"])

    assert (conf_files(project), (project / "dvc.yaml").read_bytes()) == before
    assert not (project / "conf/experiment/photos").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("kind=table", "path=own/t.csv"), "error: kind=table needs label="),
        (("kind=table", "path=own/t.csv", "label=kind"), "error: source.label: no column kind in"),
        (("kind=table", "path=own/none.csv", "label=species"), "own/none.csv does not exist"),
        (("kind=idx", "path=own/t.csv"), "error: kind=idx: new_task adds image_folder or table"),
        (("kind=image_folder", "path=own/empty"), "own/empty"),
        (("kind=image_folder", "path=own/one"), "a single class (cat)"),
        (("kind=image_folder", "path=own/few"), "class cat has 2 samples"),
    ],
    ids=["no-label", "label-missing", "no-file", "kind", "empty-folder", "one-class", "too-few"],
)
def test_data_that_cannot_make_a_task_are_one_line_and_nothing_is_written(
    project: Path, options: tuple[str, ...], message: str
) -> None:
    write_table(project / "own/t.csv", rows=30)
    (project / "own/empty").mkdir()
    write_image_folder(project / "own/one", classes=("cat",), per_class=4)
    write_image_folder(project / "own/few", classes=("cat", "dog"), per_class=2)
    before = conf_files(project)

    result = new_task(project, "name=mine", *options)

    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert conf_files(project) == before


def test_entries_go_at_the_end_of_their_sections_and_empty_ones_are_opened() -> None:
    text = "# head\nsources:\n  a: {data: x}\n\n# tasks\ntasks: {}\n"

    added = with_entries(
        text, {"sources": "b: {data: y}", "tasks": "b: {source: b}", "new": "c: 1"}
    )

    assert added == (
        "# head\nsources:\n  a: {data: x}\n  b: {data: y}\n\n# tasks\ntasks:\n  b: {source: b}\n"
        "\nnew:\n  c: 1\n"
    )


def test_help_prints_the_usage_and_what_it_writes(capsys: pytest.CaptureFixture[str]) -> None:
    new_task_module.main(["--help"])

    shown = capsys.readouterr().out
    assert shown.startswith("usage: python -m pipeline.new_task name=<task> kind=")
    assert "conf/tasks.yaml" in shown
