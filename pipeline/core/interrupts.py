"""Ctrl-C and SIGTERM: a stage unwinds as KeyboardInterrupt, so that its open MLflow runs end
KILLED, whenever the signal comes.

A KeyboardInterrupt raised at an arbitrary moment can land where nothing recovers from it:
inside MLflow's start or end of a run (the run's record made, or half-ended: RUNNING for ever),
inside one of its SQLite writes (the aborted transaction kept the database locked, so the run
could not be ended KILLED), inside TensorFlow's C++ bindings (the interrupt came out as a
RuntimeError, the run FAILED). So a signal is acted on at moments known to be safe:

- `deferred()` blocks (a run's start and end): at the block's end;
- `cooperative()` blocks (a model's fit): at the next batch's end (`keras_callback`), or after
  COOPERATION_GRACE_S if no batch ends by then;
- inside a session of MLflow's SQL store (a `log_param`, a metric; in any block or none):
  within STORE_POLL_S of its end. Raised inside, the interrupt left the session's SQLite lock
  held, and the end of the run KILLED waited out the store's busy timeout (20 s) until a sweep
  killed the process, its runs and its siblings' left RUNNING;
- anywhere else (start-up, between steps): at once.

An interrupt raised anywhere but at a batch's end can be swallowed: Keras and TensorFlow have
bare `except:` clauses (in a fit's first step, where the loss is built; in the logs each batch
hands its callbacks), and Python drops one raised in a garbage-collection callback. The fit
then trained on with its run RUNNING until a sweep killed it (test_a_killed_joblib_sweep_...,
SIGTERM in a job's first epoch). So once raised, the interrupt is raised again at every safe
point that comes after (`safe_point`). Raised where C code calls back into Python, it can come
out as another error; once a signal is acted on, whatever error a stage's fit, run or job ends
with is that signal's interrupt (`as_interrupt`).

A joblib worker leaves its sweep last (`exit_with_the_sweep`): loky kills a pool's workers as
soon as one of them exits, so a worker that exited at once, idle or done with its runs, had its
sibling killed while that one still ended its run KILLED, the run left RUNNING
(benchmarks/stress_interrupts.py, sweep-joblib SIGTERM).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

STAGE_PID = "PIPELINE_STAGE_PID"  # the process the stage was started as, in its environment
STOP_GRACE_S = 20.0  # how long processes told to stop get to end their runs KILLED
# How long a fit may take to reach a batch's end before it is cut: batches end in milliseconds,
# but a fit's first batch traces its step (seconds under load), and each second spent here is
# one less of the STOP_GRACE_S a stopped process has to end its runs before it is killed.
COOPERATION_GRACE_S = 3.0
STORE_POLL_S = 0.005  # how often a signal held for a database session looks whether it is over
DATABASE_MODULES = ("sqlalchemy.", "mlflow.store.db.")  # and MLflow's <store>.sqlalchemy_store

_acting_on: list[int] = []  # the signal being acted on, once one came
_held: list[int] = []  # a signal that came inside a block, to act on at a safe moment
_depth = 0  # how many deferred() blocks are open
_cooperating = 0  # how many cooperative() blocks are open
_job_lock: list[int] = []  # in a launcher's worker running a job: its sweep lock, held shared


def install() -> None:
    """Unwind this process as KeyboardInterrupt on SIGTERM, and on SIGINT unless it is ignored
    (a background job of a non-interactive shell: then it stays ignored)."""
    signal.signal(signal.SIGTERM, _on_signal)
    sys.unraisablehook = _unraisable
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_signal)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _depth or _cooperating or _in_database(frame):
        _held[:] = [signum]
        if not _depth:  # a fit stuck in one batch is cut short all the same
            _outside_database(safe_point, COOPERATION_GRACE_S if _cooperating else STORE_POLL_S)
        return
    _act_on(signum)


def _in_database(frame: FrameType | None) -> bool:
    """Whether the main thread, at `frame`, is inside a session of MLflow's SQL store."""
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith(DATABASE_MODULES) or name.endswith(".sqlalchemy_store"):
            return True
        frame = frame.f_back
    return False


def _outside_database(action: Callable[[], None], after_s: float) -> None:
    """`action` in `after_s` seconds, or as soon after as the main thread is out of the store."""

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        if _in_database(frame):
            signal.setitimer(signal.ITIMER_REAL, STORE_POLL_S)
        else:
            action()

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, after_s)


def safe_point() -> None:
    """A moment where a held signal may be acted on: outside deferred() blocks. Reached after
    the interrupt was raised, it was swallowed (nothing that unwinds for it reaches a safe
    point): raised again, here."""
    if _depth:
        return
    if _held:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _act_on(_held.pop())
    elif _acting_on:
        _raise(_acting_on[0])


def _act_on(signum: int) -> None:
    # A second signal (Ctrl-C again, a process group's SIGINT with our SIGTERM) would cut the
    # unwinding short and leave runs RUNNING. Caught and dropped, not SIG_IGN: a launcher's
    # worker ignoring SIGTERM would look to its sweep's stop_children like joblib's resource
    # tracker, and the sweep would not wait for it to end its runs (joblib then kills it).
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, _dropped)
    stop_children()
    if in_launcher_worker() and not _job_lock:
        exit_with_the_sweep(128 + signum)  # idle, or still loading its job: no run to end
    _raise(signum)


def _dropped(signum: int, frame: object) -> None:
    pass


def _raise(signum: int, *_: object) -> None:
    _acting_on[:] = [signum]
    raise KeyboardInterrupt(f"signal {signum}")


def interrupted_by() -> int | None:
    """The signal this process is unwinding for, if any."""
    return _acting_on[0] if _acting_on else None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block that SIGINT and SIGTERM do not cut short: one that comes inside it is acted on
    as it ends (a KeyboardInterrupt raised there, not in the middle)."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if not _depth and _held:
        _act_on(_held.pop())


@contextlib.contextmanager
def as_interrupt() -> Iterator[None]:
    """A block whose error, once the process acts on a signal, is that signal's interrupt.
    Raised where C code calls back into Python (TensorFlow's tracing of a fit's first step, cut
    at COOPERATION_GRACE_S), the KeyboardInterrupt comes out as another error (`SystemError:
    Objects/listobject.c:338: bad argument to internal function`): the run ended FAILED, and a
    search would count the trial failed and go on to the next."""
    try:
        yield
    except Exception as error:
        if not _acting_on:
            raise
        raise KeyboardInterrupt(f"signal {_acting_on[0]}") from error


@contextlib.contextmanager
def cooperative() -> Iterator[None]:
    """A model's fit: a signal that comes inside it is acted on at a batch's end, where Keras
    hands control to its callbacks (`keras_callback` must be among them)."""
    global _cooperating
    _cooperating += 1
    try:
        with as_interrupt():
            yield
    finally:
        _cooperating -= 1
    if not _cooperating:
        safe_point()


def keras_callback() -> Any:
    """The Keras callback that gives a fit inside `cooperative()` its safe moments. Put it
    last: the callbacks before it (MLflow's) finish their batch or epoch first."""
    import keras

    class SafePoints(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            safe_point()

        def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
            safe_point()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            safe_point()

    return SafePoints()


def _unraisable(hook: Any) -> None:
    """Raise again an interrupt that Python swallowed: one raised while a garbage-collection
    callback or a __del__ ran (JAX's, TensorFlow's) is printed and dropped, and the training
    it was to stop would go on with its run RUNNING. 10 ms later, outside that callback and
    out of the store (or at a batch's end, if one comes first); armed after the report is
    printed, since one raised inside the printing is lost for good."""
    sys.__unraisablehook__(hook)
    if isinstance(hook.exc_value, KeyboardInterrupt) and _acting_on:
        _outside_database(functools.partial(_raise, _acting_on[0]), 0.01)


def in_launcher_worker() -> bool:
    """Whether this process is a launcher's worker (joblib's), not the stage's own."""
    return os.environ.get(STAGE_PID, str(os.getpid())) != str(os.getpid())


def sweep_lock() -> Path:
    """The file a sweep's workers lock: shared by each while it runs a job (`job_in_sweep`),
    exclusively by one about to exit (`exit_with_the_sweep`)."""
    stage = os.environ.get(STAGE_PID, str(os.getpid()))
    return Path(tempfile.gettempdir()) / f"pipeline-sweep-{os.getuid()}-{stage}.lock"


@contextlib.contextmanager
def job_in_sweep() -> Iterator[None]:
    """A launcher worker's job, from its start until its runs have ended: its siblings told to
    stop wait for it before they exit."""
    import fcntl

    # Deferred: a signal between taking the lock and noting it would have this worker wait for
    # its own lock.
    with deferred():
        lock = os.open(sweep_lock(), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(lock, fcntl.LOCK_SH)
        _job_lock[:] = [lock]
    try:
        yield
    finally:
        with deferred():
            _job_lock.clear()
            os.close(lock)  # and with it the lock


def exit_with_the_sweep(status: int) -> NoReturn:
    """Exit this launcher's worker once none of its sweep's workers is in a job any more, or
    after STOP_GRACE_S, when the sweep kills what is left."""
    import fcntl

    sys.stderr.flush()
    with contextlib.suppress(OSError):
        lock = os.open(sweep_lock(), os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.05)
    os._exit(status)


def die_with_the_stage() -> None:
    """In a process the stage started (a launcher's worker), `die_with` the stage, and act on
    signals as a worker does: one that came while the worker still loaded its first job killed
    it at once, and loky then its siblings."""
    if os.environ.get(STAGE_PID) == str(os.getppid()):
        die_with(os.getppid())
        install()


def die_with(parent: int) -> bool:
    """Have the kernel send this process SIGTERM when process `parent` (its parent) dies, as
    it does nothing for children when their parent is killed outright (SIGKILL); False if the
    parent is already gone. Linux only; elsewhere nothing is arranged, and True."""
    if not sys.platform.startswith("linux"):
        return True
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    return os.getppid() == parent  # else it died before the line above


def terminate(processes: Iterable[Any], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM to each process (psutil.Process or subprocess.Popen), then wait up to `grace`
    seconds in all for them to end their runs; SIGKILL to any still running then."""
    import psutil

    processes = list(processes)
    procs = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = process if isinstance(process, psutil.Process) else psutil.Process(process.pid)
            proc.terminate()
            procs.append(proc)
    _, left = psutil.wait_procs(procs, timeout=grace)
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(left, timeout=grace)
    for process in processes:
        if hasattr(process, "poll"):
            process.poll()  # reaped by psutil: let Popen see its exit status


def stop_children() -> None:
    """Pass SIGTERM on to this process's children and wait until they end. A launcher's workers
    (joblib's) run a sweep's jobs: interrupted, the launcher would kill them outright (SIGKILL),
    their runs left RUNNING. Children that ignore SIGTERM (joblib's resource tracker) are left
    alone."""
    import psutil

    terminate(c for c in psutil.Process().children() if not _ignores_sigterm(c.pid))


def _ignores_sigterm(pid: int) -> bool:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False
