"""dvc.yaml against what each stage really reads, derived, not kept by hand.

For every stage DVC resolves from dvc.yaml (each `foreach` item), the stage's command is composed
with Hydra's compose API: the config files that composition loads and that set a key the stage
reads (`reads=` of its `@stage`) must be exactly its params, and the package modules its module
imports, directly or not, exactly its code deps. An edit then reruns the stages that read it and
no others.
"""

from __future__ import annotations

import ast
import importlib
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
GLOBAL = "# @package _global_"


def resolved_stages() -> dict[str, Any]:
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {stage.addressing: stage for stage in repo.index.stages}


def keys_set(path: Path, package: str) -> set[str]:
    """Every dotted key a config file sets, under its package; `defaults` stands for the files
    its defaults list chooses."""
    text = path.read_text()
    data = yaml.safe_load(text) or {}
    prefix = "" if text.startswith(GLOBAL) or not package else f"{package}."
    keys = set()

    def walk(node: Any, at: str) -> None:
        if isinstance(node, dict) and node and at != "defaults":
            for key, value in node.items():
                walk(value, f"{at}.{key}" if at else str(key))
        else:
            keys.add(at if at == "defaults" else prefix + at)

    walk(data, "")
    return keys


def reads_any(keys: set[str], reads: tuple[str, ...]) -> bool:
    return "defaults" in keys or any(
        key == read or key.startswith(f"{read}.") or read.startswith(f"{key}.")
        for key in keys
        for read in reads
    )


def composed_files(config_name: str, overrides: list[str]) -> dict[Path, str]:
    """The config files a composition loads, each with its package (a group's name)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    files = {CONF / f"{config_name}.yaml": ""}
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    for group, choice in choices.items():
        if group.startswith("hydra/") or choice is None:
            continue
        path = CONF / group / f"{choice}.yaml"
        if path.exists():  # not the schemas Hydra's config store holds
            files[path] = group
    return files


def module_file(name: str) -> Path | None:
    """The source file of module or package `name` ("pipeline.core.config"), if it is one."""
    path = ROOT.joinpath(*name.split("."))
    if path.with_suffix(".py").exists():
        return path.with_suffix(".py")
    return path / "__init__.py" if (path / "__init__.py").exists() else None


def imported_modules(module: str) -> set[str]:
    """The files of `pipeline.<module>` and of the package modules it imports, directly or not,
    with the packages' __init__.py files that importing them runs."""
    seen: set[str] = set()
    todo = [f"pipeline.{module}"]
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None or name in seen:
            continue
        seen.add(name)
        todo += [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
                todo.append(node.module)
                # `from package import module` imports the module too
                todo += [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names if alias.name.startswith("pipeline")]
    return {str(module_file(name).relative_to(ROOT)) for name in seen}


def expected(stage: Any) -> tuple[set[str], set[str]]:
    argv = shlex.split(stage.cmd)
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("pipeline."), stage.cmd
    module = argv[2].removeprefix("pipeline.")
    overrides = [arg for arg in argv[3:] if not arg.startswith("hydra.")]
    assert "hydra.run.dir=." in argv, f"{stage.addressing} must write the pipeline's own folders"
    main = importlib.import_module(f"pipeline.{module}").main
    config_name = {"fetch": "fetch", "report": "report"}.get(module, "config")
    params = {
        str(path.relative_to(ROOT))
        for path, package in composed_files(config_name, overrides).items()
        if reads_any(keys_set(path, package), main.reads)
    }
    if module == "report":
        params.add("conf/tasks.yaml")  # its task list
    code = imported_modules(module)
    return params, code


STAGES = resolved_stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_lists_exactly_the_config_files_and_code_it_reads(name: str) -> None:
    stage = STAGES[name]
    params, code = expected(stage)
    listed_params = set()
    for dep in stage.deps:
        if hasattr(dep, "params"):
            assert not dep.params, f"{name}: {dep.def_path} lists keys; files serve one reader"
            listed_params.add(dep.def_path)
    listed_code = {dep.def_path for dep in stage.deps if dep.def_path.startswith("pipeline/")}
    assert listed_params == params, f"{name}: params in dvc.yaml vs what it composes and reads"
    assert listed_code == code, f"{name}: code deps in dvc.yaml vs the modules it imports"


def test_every_task_listed_once_has_its_files() -> None:
    tasks = yaml.safe_load((CONF / "tasks.yaml").read_text())
    for task in tasks["tasks"]:
        assert (CONF / "dataset" / f"{task}.yaml").exists(), task
    for task in tasks["searched"]:
        assert (CONF / "search" / f"{task}.yaml").exists(), task
        assert (CONF / "experiment" / task / "tuned.yaml").exists(), task
    stages = {name.split("@")[0] for name in STAGES}
    assert {"fetch", "split", "tune", "train", "train_tuned", "evaluate", "crossval"} <= stages


def test_every_task_has_its_champion_among_dvc_yaml_artifacts() -> None:
    """DVC expands no `foreach` in `artifacts:`: a task added to conf/tasks.yaml needs its own
    entry, a model at the folder the report copies its champion to."""
    from dvc.repo import Repo

    tasks = yaml.safe_load((CONF / "tasks.yaml").read_text())["tasks"]
    with Repo(str(ROOT)) as repo:
        (artifacts,) = repo.artifacts.read().values()
        report = repo.stage.collect("report")[0]
    assert set(artifacts) == set(tasks)
    for task, artifact in artifacts.items():
        assert artifact.path == f"champions/{task}" and artifact.type == "model", task
        assert artifact.desc, f"{task}: an artifact says what it is"
    assert "champions" in {out.def_path for out in report.outs}
