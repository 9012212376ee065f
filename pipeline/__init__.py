"""The pipeline: one module per stage (`python -m pipeline.<stage>`, named as in dvc.yaml), on
the shared core in the sub-packages: core (config, stage entry point, backend), data, models,
tracking (MLflow, the team server), search (Keras Tuner, distributed mode) and reporting."""

from pipeline.core import interrupts

# From a process's first import of the pipeline on, not from its job's start: a sweep's joblib
# worker still importing its job (TensorFlow, MLflow: seconds under load) when the sweep was
# killed outright (SIGKILL) lived on, holding the sweep's resource trackers with it
# (benchmarks/stress_interrupts.py).
interrupts.die_with_the_stage()
