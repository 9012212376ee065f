"""How a stage starts: Hydra composes `conf/`, and a user's mistake ends as one line, exit 1."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from pipeline.core import backend, config, interrupts, timings
from pipeline.core.errors import PipelineError
from pipeline.core.interrupts import STAGE_PID

# Stages run from the repository root (DVC starts them there), so its conf/ is the one in
# force, also in a test's temporary repository.
CONF_DIR = str(Path.cwd() / "conf")


class JobFailed(Exception):
    """A -m job's PipelineError, already printed: it only tells the sweep that the job failed."""


def one_line(error: BaseException) -> str:
    """The first line of an error and of its cause: Hydra's and OmegaConf's messages go on for
    lines of internals (reference_type, object_type) after the one that names the bad value."""
    lines = [str(error).strip().splitlines()[0].rstrip(".")]
    if error.__cause__ is not None and str(error.__cause__).strip():
        lines.append(str(error.__cause__).strip().splitlines()[0])
    return ": ".join(lines)


def stage(
    config_name: str, reads: tuple[str, ...]
) -> Callable[[Callable[[DictConfig], None]], Callable[[], None]]:
    """Turn `run(cfg)` into a Hydra command-line entry point reading conf/<config_name>.yaml.

    `reads`: the config keys the stage uses (a section, or one key of it). dvc.yaml lists as the
    stage's params every config file it composes that sets one of them, and no other
    (tests/test_dvc_yaml.py checks this).
    """
    config.register()

    def decorate(run: Callable[[DictConfig], None]) -> Callable[[], None]:
        failures: list[str] = []

        @hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")
        def hydra_main(cfg: DictConfig) -> None:
            work_started = time.time()
            in_worker = interrupts.in_launcher_worker()
            interrupts.install()
            # A launcher's worker (joblib's) dies with its sweep from its first import of the
            # pipeline on (pipeline/__init__.py); one whose sweep was killed outright before
            # that would train on, and then wait for more jobs.
            if in_worker and os.getppid() != int(os.environ[STAGE_PID]):
                os._exit(128 + signal.SIGTERM)
            try:
                with (
                    interrupts.job_in_sweep() if in_worker else contextlib.nullcontext(),
                    interrupts.as_interrupt(),
                ):
                    if "backend" in cfg:
                        backend.use(cfg.backend, cfg.deterministic, cfg.threads)
                    run(cfg)
            except KeyboardInterrupt:
                if in_worker:
                    # Its runs have ended KILLED. Left alive, the worker would go on to the
                    # next job, and the sweep's process would wait for it in vain.
                    signum = interrupts.interrupted_by() or signal.SIGTERM
                    interrupts.exit_with_the_sweep(128 + signum)
                raise
            except PipelineError as error:
                print(f"error: {error}", file=sys.stderr)
                if HydraConfig.get().mode == RunMode.MULTIRUN:
                    # A launcher may run the job in another process (joblib, SLURM): raised, the
                    # failure travels back in the job's result, and Hydra raises it here once
                    # the batch's other jobs have run (a list kept here would stay over there).
                    raise JobFailed(str(error)) from None
                # Not raised: Hydra would add a line of its own to a single run's error.
                failures.append(str(error))
            finally:
                timings.stage_done(
                    HydraConfig.get().job.name, list(HydraConfig.get().overrides.task), work_started
                )

        @functools.wraps(run)
        def main() -> None:
            os.environ[STAGE_PID] = str(os.getpid())
            # Hydra names a job after the file of its main, this one: the stage's own name is
            # what its --help, its log and its sweep folders should say.
            module = sys.modules[run.__module__]  # __main__ under `python -m`: its spec names it
            name = module.__spec__.name if module.__spec__ else run.__module__
            sys.argv.append(f"hydra.job.name={name.rpartition('.')[2]}")
            interrupts.install()  # also while a launcher's workers run the jobs
            wants_traceback = bool(os.environ.get("HYDRA_FULL_ERROR"))
            # Makes Hydra raise a config error instead of printing its own multi-line report.
            os.environ["HYDRA_FULL_ERROR"] = "1"
            try:
                hydra_main()
            except (HydraException, OmegaConfBaseException) as error:
                if wants_traceback:
                    raise
                print(f"error: {one_line(error)}", file=sys.stderr)
                sys.exit(1)
            except JobFailed:
                sys.exit(1)
            except KeyboardInterrupt:
                if wants_traceback:
                    raise
                signum = interrupts.interrupted_by() or signal.SIGINT
                print(f"interrupted by {signal.Signals(signum).name}", file=sys.stderr)
                sys.exit(128 + signum)
            finally:
                interrupts.sweep_lock().unlink(missing_ok=True)  # made by a sweep's workers
            if failures:
                sys.exit(1)

        main.reads = reads  # type: ignore[attr-defined]
        return main

    return decorate
