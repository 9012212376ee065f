"""Stage processes forked from one warm interpreter per test process.

A stage started afresh spends seconds importing MLflow, Hydra, scikit-learn and pandas before
its work (a tiny fit takes one), and the suite starts hundreds: on CI's two cores that was much
of its time. `stage_in` (conftest.py) asks this server instead: it imported those libraries
once, and forks a child per stage that sets the stage's folder, environment and arguments, then
runs `python -m pipeline.<stage>` as the interpreter would, exiting as a fresh process does
(atexit, its exit status or signal). The pipeline itself is imported in the child, from the
project copy, so each test runs its own copy's code.

What a warm start does not cover is left to the processes DVC, Hydra's launchers and the signal
tests start themselves (the end-to-end repro, sweeps, interrupts): those start every stage
afresh. Neither Keras nor TensorFlow (which imports Keras) is preloaded: Keras reads its
backend when first imported, and `backend.use` sets the backend's thread and determinism
switches before that. A stage whose environment changes what the preloaded imports read starts
afresh, as does every stage when PIPELINE_TEST_FRESH_STAGES=1.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRELOAD = ("mlflow", "hydra", "omegaconf", "sklearn", "pandas", "scipy.stats")
# What the interpreter and the preloaded libraries read when they start (NumPy's BLAS its thread
# count): a stage setting any of these starts afresh.
READ_AT_IMPORT = ("PYTHON", "OMP_", "OPENBLAS_", "MKL_")
FRESH = "PIPELINE_TEST_FRESH_STAGES"


def wanted(extra_env: dict[str, str]) -> bool:
    """Whether a stage with `extra_env` on top of the tests' own environment can start warm."""
    return os.environ.get(FRESH) != "1" and not any(
        key.startswith(READ_AT_IMPORT) for key in extra_env
    )


class Server:
    """This test process's server, started at the first warm stage, stopped at exit."""

    def __init__(self, env: dict[str, str]) -> None:
        self.folder = tempfile.mkdtemp(prefix="stage-server-")
        self.address = str(Path(self.folder) / "socket")
        self.log = open(Path(self.folder) / "log", "w+b")  # noqa: SIM115 (lives with the server)
        self.process = subprocess.Popen(
            [sys.executable, __file__, self.address],
            cwd=self.folder,
            env=env,
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
            socket.socket(socket.AF_UNIX) as connection,
        ):
            connection.connect(self.address)
            socket.send_fds(
                connection, [json.dumps(request).encode()], [out.fileno(), err.fileno()]
            )
            answers = connection.makefile("r")
            pid = int(answers.readline())
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


def run(
    module: str,
    args: list[str],
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    server_env: dict[str, str],
) -> subprocess.CompletedProcess:
    """`Server.run` on this test process's server, started with `server_env` (the tests' own
    environment, not the first stage's) when first asked."""
    if not _server:
        _server.append(Server(server_env))
    return _server[0].run(module, args, cwd, env, timeout)


def serve(address: str) -> dict:
    """Import PRELOAD, then fork a child for each request; the parent answers the child's pid,
    then its exit status. Returns, in the child only, the request it is to run."""
    import importlib

    for module in PRELOAD:
        importlib.import_module(module)
    if "keras" in sys.modules:
        raise RuntimeError("a preloaded module imported Keras before the stage set its backend")
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
