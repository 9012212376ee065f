"""Shared fixtures: a throwaway copy of the project to run real stages in, and its MLflow store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import stage_server
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from omegaconf import DictConfig

from pipeline.core import config

ROOT = Path(__file__).resolve().parents[1]


def stage_env(**extra: str) -> dict[str, str]:
    """The environment a stage runs in: no tracking URI, mirror or DVC experiment leaking in
    from the caller (DVC_ROOT would send the runs to the caller's store)."""
    leaks = (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_ID",
        "PIPELINE_DATA_MIRROR",
        "DVC_EXP_NAME",
        "DVC_ROOT",
        "DVC_EXP_BASELINE_REV",
    )
    env = {k: v for k, v in os.environ.items() if k not in leaks}
    # The environment's own dvc and python come first, however pytest was started.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", **extra)
    return env


def warm_stages() -> dict[str, str]:
    """The environment for a `dvc repro` whose stages start warm (stage_server.py) where they
    can: its PATH, led by the server's `python`."""
    if not stage_server.wanted({}):
        return {}
    env = stage_env()
    return {"PATH": f"{stage_server.shim_path(env)}{os.pathsep}{env['PATH']}"}


def copy_project(repo: Path) -> Path:
    """A copy of the project's pipeline definition (conf/, dvc.yaml, the package) in `repo`."""
    repo.mkdir(exist_ok=True)
    for name in ("conf", "pipeline"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    return repo


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project's pipeline definition (conf/, dvc.yaml, the package) to run in."""
    return copy_project(tmp_path / "project")


def stage_in(
    repo: Path, stage: str, *overrides: str, check: bool = True, by_hand: bool = False, **env: str
) -> subprocess.CompletedProcess:
    """Run `python -m pipeline.<stage> <overrides>` in `repo`, as DVC would (into the pipeline's
    own folders, hydra.run.dir=.); `by_hand=True` runs it as a user would. Forked from a warm
    interpreter where it can be (stage_server.py)."""
    args = [*overrides, *(() if by_hand else ("hydra.run.dir=.",))]
    if stage_server.wanted(env, args):
        result = stage_server.run(
            f"pipeline.{stage}", args, repo, stage_env(**env), 600, server_env=stage_env()
        )
    else:
        result = subprocess.run(
            [sys.executable, "-m", f"pipeline.{stage}", *args],
            cwd=repo,
            env=stage_env(**env),
            capture_output=True,
            text=True,
            timeout=600,
        )
    if check and result.returncode != 0:
        pytest.fail(
            f"{stage} {overrides} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@pytest.fixture
def run_stage(project: Path) -> Callable[..., subprocess.CompletedProcess]:
    """`stage_in` the project copy."""

    def run(stage: str, *overrides: str, **options: object) -> subprocess.CompletedProcess:
        return stage_in(project, stage, *overrides, **options)

    return run


@pytest.fixture(scope="session")
def circles_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/ holding circles' raw and split files, made once per test process by the real fetch
    and split stages in a project copy of its own: two stage starts saved per test using them."""
    repo = copy_project(tmp_path_factory.mktemp("circles-data") / "project")
    stage_in(repo, "fetch", "source=circles")
    stage_in(repo, "split", "dataset=circles")
    return repo / "data"


@pytest.fixture
def circles_split(circles_data: Path, project: Path) -> Path:
    """data/split/circles.npz made by the real fetch and split stages, copied into the project
    (neither stage writes to MLflow, so the copy leaves the project as the stages would)."""
    shutil.copytree(circles_data, project / "data", dirs_exist_ok=True)
    return project / "data" / "split" / "circles.npz"


def compose_config(name: str = "config", overrides: tuple[str, ...] = ()) -> DictConfig:
    """conf/<name>.yaml composed with `overrides`, as a stage's Hydra would compose it."""
    config.register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def mlflow_client(repo: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")


def all_runs(client: MlflowClient) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, max_results=1000)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest tests first, the end-to-end repro (`slow(first=True)`) before the other slow
    ones: handed out one at a time (pyproject.toml's `--dist load --maxschedchunk 1`), they
    spread over the workers and the short ones fill in after, instead of one worker starting
    the repro after other slow tests and finishing minutes after the rest."""

    def order(item: pytest.Item) -> tuple[bool, bool]:
        slow = item.get_closest_marker("slow")
        return slow is None, not (slow is not None and slow.kwargs.get("first", False))

    items.sort(key=order)


def wait_until_answering(
    process: subprocess.Popen, url: str, log: Path, timeout: float = 60.0
) -> None:
    """Wait until a server started as `process` answers `url` with 200; fail with the end of
    its `log` if it exits or stays silent."""
    import time
    import urllib.error
    import urllib.request

    # A proxy set in the caller's environment must not see loopback requests.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"{process.args[:3]} exited ({process.returncode}):\n{log.read_text()[-4000:]}"
            )
        try:
            with opener.open(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-4000:]}")


@contextmanager
def cpu_busy() -> Iterator[None]:
    """A CPU-bound process beside the block, as on a busy laptop or a shared CI machine."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        burner.kill()
        burner.wait()


def tensorboard_scalars(folder: Path) -> dict[str, list[float]]:
    """Each scalar tag of the TensorBoard event files in `folder`, with its values in step
    order. Keras 3 writes scalars as tensor events; every one is kept (by default TensorBoard's
    reader samples 10 a tag)."""
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util

    events = ea.EventAccumulator(str(folder), size_guidance={ea.TENSORS: 0})
    events.Reload()
    return {
        tag: [float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]
        for tag in events.Tags()["tensors"]
    }


@contextmanager
def tensorboard_serving(logdir: Path, log: Path) -> Iterator[str]:
    """A real `tensorboard` serving `logdir` on a free loopback port; yields its URL."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(logdir)]
    with log.open("w") as out:
        server = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false"],
            env=stage_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_answering(server, url + "/data/logdir", log)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
