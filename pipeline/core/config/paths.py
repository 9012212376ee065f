"""The schema of conf/paths/: where stages read and write (the pipeline's folders, or a job's)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """Where stages meet, under one root folder (dvc.yaml names the same paths)."""

    root: Path
    # Reading only: where a path missing under `root` is taken from instead.
    fallback: Path | None = None

    def path(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        if self.fallback is not None and not path.exists():
            return self.fallback.joinpath(*parts)
        return path

    def raw_file(self, source: str) -> Path:
        return self.path("data", "raw", f"{source}.npz")

    def split_file(self, task: str) -> Path:
        return self.path("data", "split", f"{task}.npz")

    def model_dir(self, task: str, variant: str) -> Path:
        return self.path("models", task, variant)

    def search_dir(self, task: str) -> Path:
        """The tuner's state, kept so that an interrupted search resumes."""
        return self.path("models", task, "search")

    def best_hparams_file(self, task: str) -> Path:
        return self.path("models", task, "best_hparams.yaml")

    @property
    def reports(self) -> Path:
        return self.path("reports")

    @property
    def champions(self) -> Path:
        """A copy of each task's champion model folder, champions/<task>/: what dvc.yaml's
        `artifacts:` name, so that DVC's model registry tools list them."""
        return self.path("champions")

    def report_dir(self, task: str, variant: str) -> Path:
        """A model's test figures and metrics; variant "search" holds a search's trials. Apart
        from the report's own files, so that `report` can read them all as one folder."""
        return self.path("reports", "models", task, variant)


@dataclass
class PathsConfig:
    # A stage writes under `outputs`: Hydra's job folder (outputs/<date>/<time>, or
    # multirun/<sweep>/<job> in a -m sweep) unless the command asks for the pipeline's own
    # folders, as dvc.yaml's do with `hydra.run.dir=.`; a run by hand or a sweep never
    # overwrites them. It reads what earlier stages wrote from there too, else from the
    # pipeline's folders under `inputs`: runs by hand given one paths.outputs chain like the
    # pipeline's stages.
    inputs: str = "."
    outputs: str | None = None  # None: Hydra's job folder (the current folder outside Hydra)

    @property
    def read(self) -> Layout:
        return Layout(self.write.root, fallback=Path(self.inputs))

    @property
    def write(self) -> Layout:
        if self.outputs is not None:
            return Layout(Path(self.outputs))
        from hydra.core.hydra_config import HydraConfig

        job = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else "."
        return Layout(Path(os.path.relpath(job)))
