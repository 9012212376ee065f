"""Experiment pipeline: fetch -> split -> tune -> train -> evaluate -> report (see dvc.yaml)."""
