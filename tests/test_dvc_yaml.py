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
GLOBAL = "# @package _global_"
OUTPUTS = {"data", "models", "reports"}  # the folders stages write, and later stages read


def resolved_stages(root: Path = ROOT) -> dict[str, Any]:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {stage.name: stage for stage in repo.index.stages}


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


def composed(root: Path, config_name: str, overrides: list[str]) -> Any:
    with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
        return compose(config_name, overrides=overrides, return_hydra_config=True)


def composed_files(root: Path, config_name: str, overrides: list[str]) -> dict[Path, str]:
    """The config files a composition loads, each with its package (a group's name)."""
    cfg = composed(root, config_name, overrides)
    conf = root / "conf"
    files = {conf / f"{config_name}.yaml": ""}
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    for group, choice in choices.items():
        if group.startswith("hydra/") or choice is None:
            continue
        path = conf / group / f"{choice}.yaml"
        if path.exists():  # not the schemas Hydra's config store holds
            files[path] = group
    return files


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The source file of module or package `name` ("pipeline.core.config"), if it is one."""
    path = root.joinpath(*name.split("."))
    if path.with_suffix(".py").exists():
        return path.with_suffix(".py")
    return path / "__init__.py" if (path / "__init__.py").exists() else None


def imported_modules(module: str, root: Path = ROOT) -> set[str]:
    """The files of `pipeline.<module>` and of the package modules it imports, directly or not,
    with the packages' __init__.py files that importing them runs."""
    seen: set[str] = set()
    todo = [f"pipeline.{module}"]
    while todo:
        name = todo.pop()
        path = module_file(name, root)
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
    return {str(module_file(name, root).relative_to(root)) for name in seen}


def local_data(cfg: Any) -> set[str]:
    """What a fetch stage reads besides its config: the source's local path, else its file."""
    path = cfg.source.get("path")
    return {path if path else f"conf/source/{cfg.source.name}.yaml"}


def model_code(cfg: Any, root: Path) -> set[str]:
    """The file holding a custom model's function (model.build), from the repository root."""
    build = OmegaConf.select(cfg, "model.build")
    if not build:
        return set()
    module = build.partition(":")[0]
    return {str(module_file(module, root).relative_to(root))}


def expected(stage: Any, root: Path = ROOT) -> tuple[set[str], set[str]]:
    argv = shlex.split(stage.cmd)
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("pipeline."), stage.cmd
    module = argv[2].removeprefix("pipeline.")
    overrides = [arg for arg in argv[3:] if not arg.startswith("hydra.")]
    assert "hydra.run.dir=." in argv, f"{stage.addressing} must write the pipeline's own folders"
    main = importlib.import_module(f"pipeline.{module}").main
    config_name = {"fetch": "fetch", "report": "report"}.get(module, "config")
    params = {
        str(path.relative_to(root))
        for path, package in composed_files(root, config_name, overrides).items()
        if reads_any(keys_set(path, package), main.reads)
    }
    if module == "report":
        params.add("conf/tasks.yaml")  # its task list
    code = imported_modules(module, root)
    if module == "fetch":
        code |= local_data(composed(root, config_name, overrides))
    elif module != "report":
        code |= model_code(composed(root, config_name, overrides), root)
    return params, code


def disagreement(stage: Any, root: Path = ROOT) -> str | None:
    """How dvc.yaml's `stage` differs from what it composes, reads and imports; None if not."""
    params, code = expected(stage, root)
    listed_params = set()
    for dep in stage.deps:
        if hasattr(dep, "params"):
            if dep.params:
                return f"{stage.addressing}: {dep.def_path} lists keys; files serve one reader"
            listed_params.add(dep.def_path)
    # Code, and what a source reads locally: every dep but what earlier stages write.
    listed_code = {
        dep.def_path
        for dep in stage.deps
        if not hasattr(dep, "params") and dep.def_path.split("/")[0] not in OUTPUTS
    }
    if listed_params != params:
        return (
            f"{stage.addressing}: params in dvc.yaml {sorted(listed_params ^ params)} differ "
            "from what it composes and reads"
        )
    if listed_code != code:
        return (
            f"{stage.addressing}: code deps in dvc.yaml {sorted(listed_code ^ code)} differ from "
            "the modules it imports (and a custom model's module, a source's local data)"
        )
    return None


STAGES = resolved_stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_lists_exactly_the_config_files_and_code_it_reads(name: str) -> None:
    assert disagreement(STAGES[name]) is None


def test_every_task_listed_once_has_its_files() -> None:
    conf = ROOT / "conf"
    tasks = yaml.safe_load((conf / "tasks.yaml").read_text())
    for task in tasks["tasks"]:
        assert (conf / "dataset" / f"{task}.yaml").exists(), task
    for task in tasks["searched"]:
        assert (conf / "search" / f"{task}.yaml").exists(), task
        assert (conf / "experiment" / task / "tuned.yaml").exists(), task
    stages = {name.split("@")[0] for name in STAGES}
    assert {"fetch", "split", "tune", "train", "train_tuned", "evaluate", "crossval"} <= stages


def test_every_task_has_its_champion_among_dvc_yaml_artifacts() -> None:
    """DVC expands no `foreach` in `artifacts:`: a task added to conf/tasks.yaml needs its own
    entry, a model at the folder the report copies its champion to."""
    from dvc.repo import Repo

    tasks = yaml.safe_load((ROOT / "conf/tasks.yaml").read_text())["tasks"]
    with Repo(str(ROOT)) as repo:
        (artifacts,) = repo.artifacts.read().values()
        report = repo.stage.collect("report")[0]
    assert set(artifacts) == set(tasks)
    for task, artifact in artifacts.items():
        assert artifact.path == f"champions/{task}" and artifact.type == "model", task
        assert artifact.desc, f"{task}: an artifact says what it is"
    assert "champions" in {out.def_path for out in report.outs}
