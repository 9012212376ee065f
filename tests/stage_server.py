"""Stage processes forked from one warm interpreter per test process.

A stage started afresh spends seconds importing Keras and its backend, MLflow, Hydra,
scikit-learn and pandas before its work (a tiny fit takes one), and the suite starts hundreds:
on CI's two cores that was much of its time. `stage_in` (conftest.py) asks this server instead:
it imported those libraries once, and forks a child per stage that sets the stage's folder,
environment and arguments, then runs `python -m pipeline.<stage>` as the interpreter would,
exiting as a fresh process does (atexit, its exit status or signal). The pipeline itself is
imported in the child, from the project copy, so each test runs its own copy's code. A `dvc
repro` finds the same server behind the `python` of `shim_path()`, put first on its PATH.

Keras is imported on the tests' backend (KERAS_BACKEND, else TensorFlow), which does not start
that backend: `backend.use` still sets its thread and determinism switches in the child before
it computes. A stage on another backend, or whose environment changes what the preloaded imports
read, starts afresh, as does every stage when PIPELINE_TEST_FRESH_STAGES=1. So do the processes
Hydra's launchers, DVC's queue and the signal tests start (sweeps, experiments, interrupts).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

PRELOAD = ("mlflow", "hydra", "omegaconf", "sklearn", "pandas", "scipy.stats", "keras")
# What the interpreter and the preloaded libraries read when they start (NumPy's BLAS its thread
# count, Keras its backend, TensorFlow its oneDNN switch): a stage setting any starts afresh.
READ_AT_IMPORT = ("PYTHON", "OMP_", "OPENBLAS_", "MKL_", "KERAS_", "TF_", "XLA_")
FRESH = "PIPELINE_TEST_FRESH_STAGES"
BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")  # the tests' own, the config's default


def wanted(extra_env: dict[str, str], args: list[str] | tuple[str, ...] = ()) -> bool:
    """Whether a stage with `args` and `extra_env` on top of the tests' own environment can
    start warm."""
    return (
        os.environ.get(FRESH) != "1"
        and not any(key.startswith(READ_AT_IMPORT) for key in extra_env)
        and all(arg == f"backend={BACKEND}" for arg in args if arg.startswith("backend="))
    )


class Server:
    """This test process's server, started at the first warm stage, stopped at exit."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = {**env, "KERAS_BACKEND": BACKEND}
        self.folder = tempfile.mkdtemp(prefix="stage-server-")
        self.address = str(Path(self.folder) / "socket")
        self.log = open(Path(self.folder) / "log", "w+b")  # noqa: SIM115 (lives with the server)
        self.process = subprocess.Popen(
            [sys.executable, __file__, self.address],
            cwd=self.folder,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + 300  # the imports, on a loaded machine
        while not os.path.exists(self.address):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise RuntimeError(f"the stage server did not start:\n{self.log.read()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def run(
        self, module: str, args: list[str], cwd: Path, env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess:
        """`python -m module *args` in `cwd` with `env`, as `subprocess.run(...,
        capture_output=True, text=True, timeout=timeout)` would run it."""
        request = {"module": module, "args": args, "cwd": str(cwd), "env": env}
        with (
            tempfile.TemporaryFile() as out,
            tempfile.TemporaryFile() as err,
            started(self.address, request, [out.fileno(), err.fileno()]) as started_child,
        ):
            pid, connection, answers = started_child
            connection.settimeout(timeout)
            try:
                returncode = int(answers.readline())
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                connection.settimeout(None)
                answers.readline()
                raise subprocess.TimeoutExpired([module, *args], timeout) from None
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(
                [sys.executable, "-m", module, *args],
                returncode,
                out.read().decode(errors="replace"),
                err.read().decode(errors="replace"),
            )


_server: list[Server] = []


def server(server_env: dict[str, str]) -> Server:
    """This test process's server, started with `server_env` (the tests' own environment, not
    the first stage's) when first asked."""
    if not _server:
        _server.append(Server(server_env))
    return _server[0]


def run(
    module: str,
    args: list[str],
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    server_env: dict[str, str],
) -> subprocess.CompletedProcess:
    """`Server.run` on this test process's server."""
    return server(server_env).run(module, args, cwd, env, timeout)


def shim_path(server_env: dict[str, str]) -> str:
    """A folder whose `python` runs `python -m pipeline.<stage>` on this test process's server
    where it can start warm (and is the interpreter otherwise), to put first on a `dvc
    repro`'s PATH."""
    warm = server(server_env)
    shim = Path(warm.folder) / "bin/python"
    if not shim.exists():
        shim.parent.mkdir()
        (shim.parent / "env.json").write_text(json.dumps(warm.env))
        shim.write_text(
            f"#!{sys.executable}\nimport sys\n\nsys.path[0] = {str(Path(__file__).parent)!r}\n"
            f"import stage_server\n\nstage_server.relay({warm.address!r}, sys.argv[1:])\n"
        )
        shim.chmod(0o755)
    return str(shim.parent)


def relay(address: str, argv: list[str]) -> None:
    """Be `python *argv` for the shim of `shim_path`: a warm stage when it can be one, passing
    the signals it gets on to the stage and exiting as the stage did."""
    server_env = json.loads((Path(sys.argv[0]).parent / "env.json").read_text())
    extra_env = {k: v for k, v in os.environ.items() if server_env.get(k) != v}
    module = argv[1] if argv[:1] == ["-m"] and len(argv) > 1 else ""
    if not module.startswith("pipeline.") or not wanted(extra_env, argv):
        os.execv(sys.executable, [sys.executable, *argv])
    request = {"module": module, "args": argv[2:], "cwd": os.getcwd(), "env": dict(os.environ)}
    with started(address, request, [1, 2]) as (pid, _, answers):
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, lambda number, _: os.kill(pid, number))
        returncode = int(answers.readline())
    if returncode < 0:
        signal.signal(-returncode, signal.SIG_DFL)
        os.kill(os.getpid(), -returncode)
    sys.exit(returncode)


@contextlib.contextmanager
def started(
    address: str, request: dict, fds: list[int]
) -> Iterator[tuple[int, socket.socket, TextIO]]:
    """The pid of the child the server at `address` forked for `request` with `fds` as its
    stdout and stderr, the connection, and its lines, the next of which is the exit status."""
    with socket.socket(socket.AF_UNIX) as connection:
        connection.connect(address)
        socket.send_fds(connection, [json.dumps(request).encode()], fds)
        answers = connection.makefile("r")
        yield int(answers.readline()), connection, answers


def serve(address: str) -> dict:
    """Import PRELOAD, then fork a child for each request; the parent answers the child's pid,
    then its exit status. Returns, in the child only, the request it is to run."""
    import importlib

    for module in PRELOAD:
        importlib.import_module(module)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(address + ".new")
    listener.listen()
    os.rename(address + ".new", address)  # the client waits for the name: bound and listening
    while True:
        connection, _ = listener.accept()
        with connection:
            message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 2)
            pid = os.fork()
            if pid == 0:
                listener.close()
                for fd, target in zip(fds, (1, 2), strict=True):
                    os.dup2(fd, target)
                    os.close(fd)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.close(null)
                return json.loads(message)
            for fd in fds:
                os.close(fd)
            connection.sendall(f"{pid}\n".encode())
            _, status = os.waitpid(pid, 0)
            connection.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())


def become(request: dict) -> None:
    """Turn this forked child into `python -m <module> <args>` started in the request's folder
    with its environment."""
    import runpy

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[0] = request["cwd"]
    sys.argv = ["-m", *request["args"]]
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    become(serve(sys.argv[1]))
