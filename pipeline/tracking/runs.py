"""MLflow runs that end with the stage, and what stages add to them.

A run that raises ends FAILED (with the reason as the `failure_reason` tag: a PipelineError's
one line, else the error's type and message), one interrupted by Ctrl-C or SIGTERM ends KILLED;
none is left RUNNING, unless the store itself takes no more writes. Stages that add to a
finished run (evaluate, crossval) write to it by id and never reopen it: its status and end time
stay its own.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.entities import Metric, RunStatus, RunTag

from pipeline.core import interrupts
from pipeline.core.errors import PipelineError
from pipeline.data.checks import read_summary
from pipeline.tracking.store import owner_tags, store_errors, store_failure

if TYPE_CHECKING:
    import numpy as np

    from pipeline.data.splits import Split


# A split's parts (Split's x_<part>, y_<part>) and their MLflow dataset contexts.
SPLIT_PARTS = {"train": "training", "val": "validation", "test": "test"}


log = logging.getLogger(__name__)


def failure_reason(error: BaseException) -> str:
    """A failed run's `failure_reason`: the line the stage ends with for a PipelineError (a
    refused store write included), else the error's type and message."""
    error = store_failure(error) or error
    return str(error) if isinstance(error, PipelineError) else f"{type(error).__name__}: {error}"


def _with_store_errors(
    generator: Callable[..., Iterator[Any]],
) -> Callable[..., Iterator[Any]]:
    """`store_errors` around a generator's every step: a run's start and end write too."""

    @functools.wraps(generator)
    def steps(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with store_errors():
            return (yield from generator(*args, **kwargs))

    return steps


def system_metrics(every_seconds: float | None) -> bool:
    """Whether the next run started records MLflow's system metrics: with `every_seconds`, it
    does, sampled that often (MLflow's default, 10 s, misses most of a short run)."""
    if every_seconds is None:
        return False
    mlflow.set_system_metrics_sampling_interval(every_seconds)
    return True


@contextmanager
@_with_store_errors
def run(
    name: str,
    tags: dict[str, str],
    run_id: str | None = None,
    system_metrics_every: float | None = None,
) -> Iterator[Any]:
    """An MLflow run (a new one, or `run_id` resumed) that ends with the block's outcome, with
    system metrics sampled every `system_metrics_every` seconds if given.

    Only for the stage that owns the run (train, tune resuming its own search): resuming sets
    the run's status and end time anew. Other stages add to a run with `add_to_run`.
    """
    active = None
    try:
        with interrupts.deferred():  # MLflow makes the run's record before it hands it over
            active = mlflow.start_run(
                run_id=run_id,
                run_name=None if run_id else name,
                tags={**tags, **owner_tags()},
                log_system_metrics=system_metrics(system_metrics_every),
            )
        with interrupts.as_interrupt():
            yield active
    except KeyboardInterrupt:
        if active is not None:
            end_open_runs(active.info.run_id, RunStatus.KILLED, "interrupted")
        raise
    except BaseException as error:
        if active is not None:
            end_open_runs(active.info.run_id, RunStatus.FAILED, failure_reason(error))
        raise
    with interrupts.deferred():
        if run_id is not None and "failure_reason" in mlflow.get_run(run_id).data.tags:
            # The earlier attempt's reason: the run now ends FINISHED, and a FINISHED run with
            # a failure_reason would say it failed.
            mlflow.MlflowClient().delete_tag(run_id, "failure_reason")
        mlflow.end_run()


def require_run(run_id: str, named_in: Path) -> None:
    """Stop with one line if run `run_id`, named in file `named_in`, is not in the store in use
    (models trained against another store), before any work that would be lost."""
    from pipeline.core.errors import DataError

    try:
        mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        raise DataError(
            f"{named_in}: MLflow run {run_id} is not in the store {mlflow.get_tracking_uri()} "
            "(trained against another store?); train the model again with this one"
        ) from error


@store_errors()
def add_to_run(
    run_id: str, metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None
) -> None:
    """Log metrics and tags to run `run_id` (finished or not) without reopening it, so that its
    status and end time stay those of the stage that made it, whatever happens here."""
    now = int(time.time() * 1000)
    mlflow.MlflowClient().log_batch(
        run_id,
        metrics=[Metric(key, float(value), now, 0) for key, value in (metrics or {}).items()],
        tags=[RunTag(key, str(value)) for key, value in (tags or {}).items()],
    )


@store_errors()
def log_split(
    run_id: str, split_file: Path, data: Split, parts: Sequence[str] = ("train", "val")
) -> None:
    """Log parts of a split ("train", "val", "test") as dataset inputs of run `run_id`: named
    `<task>-<part>` (the task being the split file's stem), in context training, validation or
    test, with the split file as source and a digest of the part's whole content. The data
    summary split wrote beside the file goes into each input's profile, and with the training
    part as the run's artifact data/summary.json."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    unknown = sorted(set(parts) - set(SPLIT_PARTS))
    if unknown:
        raise ValueError(f"log_split: unknown part(s) {unknown}; known: {list(SPLIT_PARTS)}")
    source = str(Path(split_file).resolve())
    summary = read_summary(Path(split_file), f"split@{Path(split_file).stem}")
    inputs = []
    for part in parts:
        with warnings.catch_warnings():
            # MLflow registers its local-file source class twice and warns that a path could be
            # either of them; they are the same class.
            warnings.filterwarnings("ignore", message="The specified dataset source can be")
            dataset = mlflow.data.from_numpy(
                getattr(data, f"x_{part}"),
                targets=getattr(data, f"y_{part}"),
                source=source,
                name=f"{Path(split_file).stem}-{part}",
                digest=content_digest(getattr(data, f"x_{part}"), getattr(data, f"y_{part}")),
            )
        entity = dataset._to_mlflow_entity()
        if summary:
            profile = {**json.loads(entity.profile), "summary": summary}
            entity = Dataset(
                entity.name, entity.digest, entity.source_type, entity.source, entity.schema,
                json.dumps(profile, sort_keys=True),
            )  # fmt: skip
        inputs.append(
            DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, SPLIT_PARTS[part])])
        )
    client = mlflow.MlflowClient()
    if summary and "train" in parts:
        client.log_dict(run_id, summary, "data/summary.json")
    try:
        client.log_inputs(run_id, datasets=inputs)
    except mlflow.exceptions.MlflowException as error:
        # MLflow's store looks a dataset up, then inserts it if new: two jobs of a parallel
        # sweep logging the same new dataset at once both insert, and one breaks the unique
        # constraint (SQLite and PostgreSQL alike). Its second try finds the other's dataset.
        if "unique constraint" not in str(error).lower():
            raise
        client.log_inputs(run_id, datasets=inputs)


def content_digest(*arrays: np.ndarray) -> str:
    """A short hash of the arrays' dtypes, shapes and every value.

    MLflow's own digest (from_numpy's default) hashes the shape and only the first 10000 values:
    for MNIST, under 13 images. MLflow files datasets by name and digest, so two different
    training parts that begin alike would pass for one. Hashing everything costs 0.12 s for
    MNIST's 60000x28x28 float32 training part.
    """
    import numpy as np

    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:16]


def end_open_runs(outer_id: str | None, status: int, reason: str) -> None:
    """End run `outer_id` and any run still open inside it (a trial cut short with its search);
    with None, every open run. A store that takes no more writes keeps them RUNNING: the
    stage's own error, not the store's refusal to record it, is what the stage ends with."""
    with interrupts.deferred():
        while (current := mlflow.active_run()) is not None:
            refused = None
            # end_run takes the run off MLflow's stack before it writes: tried whatever
            # set_tag did.
            for write in (
                functools.partial(mlflow.set_tag, "failure_reason", reason[:5000]),
                functools.partial(mlflow.end_run, RunStatus.to_string(status)),
            ):
                try:
                    write()
                except Exception as error:
                    refused = store_failure(error)
                    if refused is None:
                        raise
            if refused is not None:
                log.warning("run %s is left RUNNING: %s", current.info.run_id, refused)
            if current.info.run_id == outer_id:
                break
