"""The pipeline: one module per stage (`python -m pipeline.<stage>`, named as in dvc.yaml), on
the shared core in the sub-packages: core (config, stage entry point, backend), data, models,
tracking (MLflow, the team server), search (Keras Tuner, distributed mode) and reporting."""
