"""conf/tasks.yaml, the list of tasks dvc.yaml runs, as `new_task` adds to it: a name is taken
once, and entries go at the end of their sections, the file's comments kept."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.core.errors import ConfigError


def refuse_taken(name: str, conf: Path) -> None:
    """Stop if `name` is a source or task already, or has conf files."""
    tasks = yaml.safe_load((conf / "tasks.yaml").read_text()) or {}
    listed = [
        f"conf/tasks.yaml {section}"
        for section in ("sources", "tasks", "searched")
        if name in (tasks.get(section) or {})
    ]
    files = [
        str(path)
        for path in (conf / "source" / f"{name}.yaml", conf / "dataset" / f"{name}.yaml",
                     conf / "search" / f"{name}.yaml", conf / "experiment" / name)
        if path.exists()
    ]  # fmt: skip
    if listed or files:
        raise ConfigError(
            f"name={name} is taken ({', '.join(listed + files)}); pick another name, or remove "
            "that task's entries and files first"
        )


def with_entries(text: str, entries: dict[str, str]) -> str:
    """conf/tasks.yaml's text with each entry added at the end of its section."""
    lines = text.splitlines()
    for section, entry in entries.items():
        start = next((i for i, line in enumerate(lines) if line.startswith(f"{section}:")), None)
        if start is None:
            lines += ["", f"{section}:"]
            start = len(lines) - 1
        elif lines[start].split(":", 1)[1].strip() == "{}":
            lines[start] = f"{section}:"
        end = start
        while end + 1 < len(lines) and (lines[end + 1].startswith("  ") or not lines[end + 1]):
            end += 1
        while end > start and not lines[end]:
            end -= 1
        lines.insert(end + 1, f"  {entry}")
    return "\n".join(lines) + "\n"
