"""Hyperparameter search: the space, the tuner, its identity and state, the pick, and
distributed mode (a chief and its workers)."""
