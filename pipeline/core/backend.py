"""Keras' backend (TensorFlow, JAX or PyTorch), how it computes, and on what.

Keras reads `KERAS_BACKEND` once, when it is first imported, and each backend reads its
determinism and thread settings once, when it starts: `use` sets them all from the config
(`backend`, `deterministic`, `threads`) before any stage imports Keras.

What a result depends on beyond code, config and data: the CPU (its instruction sets change
the rounding of vectorised sums), the thread count (the order of a sum split over threads) and
whether the backend's deterministic algorithms are on. Each is a tag of every run that trains
(`tags`), so two runs that differ can be told apart.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
from functools import cache
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError

# The modules each backend needs at run time, so also in a logged model's requirements.
MODULES = {"tensorflow": ("tensorflow",), "jax": ("jax", "jaxlib"), "torch": ("torch",)}
DETERMINISTIC = "PIPELINE_DETERMINISTIC"  # what `use` was told, for `seed` (PyTorch's switch)
THREADS = "PIPELINE_THREADS"
# The vector instruction sets that decide how a CPU rounds: oneDNN, Eigen and XLA pick the
# widest the CPU has, so those present are those in use.
ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2",
)  # fmt: skip


def use(name: Any, deterministic: bool = True, threads: int | None = None) -> str:
    """Make `name` (a `config.Backend` or its value) Keras' backend for this process, computing
    with its deterministic algorithms (`deterministic`) on `threads` intra-op threads (None: the
    backend's default, one per core)."""
    name = getattr(name, "value", name)
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != name:
            raise ConfigError(
                f"backend={name}: Keras was already imported with backend "
                f"{keras.backend.backend()} in this process; set KERAS_BACKEND={name} instead"
            )
        # Still worth setting: TensorFlow and JAX read them when they first compute, not when
        # Keras imports them (PyTorch's OMP_NUM_THREADS, though, is read at its import).
    missing = [module for module in MODULES[name] if importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError(
            f"backend={name}: {', '.join(missing)} is not installed; "
            f"`KERAS_BACKEND={name} ./dev.sh` installs it (requirements-{name}.lock)"
        )
    os.environ["KERAS_BACKEND"] = name
    os.environ[DETERMINISTIC] = "1" if deterministic else "0"
    os.environ.pop(THREADS, None)
    if threads is not None:
        os.environ[THREADS] = str(threads)
    if name == "tensorflow":
        # Read when TensorFlow starts; the same switch as enable_op_determinism(), which also
        # turns Keras' XLA compilation off (XLA has no deterministic kernels for every op).
        os.environ["TF_DETERMINISTIC_OPS"] = "1" if deterministic else "0"
        if threads is not None:
            os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
    elif name == "jax" and threads is not None:
        if threads != 1:
            raise ConfigError(
                f"threads={threads}: JAX on the CPU runs on one thread or on all cores; "
                "set threads=1 or threads=null"
            )
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        if flags not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    elif name == "torch" and threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # PyTorch's intra-op pool, read at start
    return name


def seed(value: int) -> None:
    """Seed every generator a fit draws from (Python's, NumPy's, the backend's), with PyTorch's
    deterministic algorithms where asked (it has no switch to read when it starts)."""
    import keras

    keras.utils.set_random_seed(value)
    if keras.backend.backend() == "torch":
        import torch

        torch.use_deterministic_algorithms(os.environ.get(DETERMINISTIC) != "0")


def device() -> str:
    """What Keras computes on: "CPU", or the first GPU's name."""
    import keras

    name = keras.backend.backend()
    if name == "jax":
        import jax

        first = jax.devices()[0]
        return "CPU" if first.platform == "cpu" else first.device_kind
    if name == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)


def tags() -> dict[str, str]:
    """What a run's figures depend on beyond code, config and data: the backend and libraries
    at their versions, the device, the CPU and its instruction sets, the thread count and
    whether determinism was on. Tags of every run that trains."""
    import keras

    name = keras.backend.backend()
    module = importlib.import_module(MODULES[name][0])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "keras.version": keras.version(),
        "keras.backend": name,
        "keras.backend.version": str(module.__version__),
        "keras_tuner.version": importlib.metadata.version("keras-tuner"),
        "mlflow.version": importlib.metadata.version("mlflow"),
        "numpy.version": importlib.metadata.version("numpy"),
        "device": device(),
        **machine_tags(),
        "cpu.cores": str(cores),
        "threads": os.environ.get(THREADS) or f"default ({cores})",
        "deterministic": "false" if os.environ.get(DETERMINISTIC) == "0" else "true",
    }


# The tags of `tags` that say where and how a run computed (the report's machine lines).
MACHINE_TAGS = (
    "cpu", "cpu.isa", "cpu.cores", "threads", "deterministic", "device", "keras.backend",
    "keras.backend.version", "keras.version", "keras_tuner.version", "mlflow.version",
)  # fmt: skip


@cache
def machine_tags() -> dict[str, str]:
    """The CPU's model and the instruction sets of ISA_FLAGS it has."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model name") and model in ("", platform.machine()):
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:  # not Linux
        pass
    return {"cpu": model, "cpu.isa": ",".join(f for f in ISA_FLAGS if f in flags) or "unknown"}
