"""Models: built from config (nets), fitted (fitting), saved and read back (saved).

`from pipeline import models` gives all three; modules of this package import one another by
name, not through here.
"""

from pipeline.models.custom import (
    InputSpec,
    build_function,
    import_module_of,
    source_file,
)
from pipeline.models.fitting import (
    Fitted,
    batches,
    epoch_orders,
    fit,
    fit_keras,
    fit_sklearn,
    learning_rate_schedule,
    nan_guard,
    with_hparams,
)
from pipeline.models.nets import (
    PIXEL_MAX,
    Inputs,
    accuracy,
    augment,
    build_keras,
    build_optimizer,
    build_sklearn,
    count_params,
    inputs_of,
    is_keras,
    is_keras_net,
    predict_proba,
)
from pipeline.models.saved import (
    HISTORY_COLUMNS,
    HISTORY_FILE,
    KERAS_FILE,
    RUN_FILE,
    SKLEARN_FILE,
    load,
    read_history,
    read_run,
    save,
    save_weights,
    stage_of,
)

__all__ = [
    "Fitted",
    "HISTORY_COLUMNS",
    "HISTORY_FILE",
    "InputSpec",
    "Inputs",
    "KERAS_FILE",
    "PIXEL_MAX",
    "RUN_FILE",
    "SKLEARN_FILE",
    "accuracy",
    "augment",
    "batches",
    "build_function",
    "build_keras",
    "build_optimizer",
    "build_sklearn",
    "count_params",
    "epoch_orders",
    "fit",
    "fit_keras",
    "fit_sklearn",
    "import_module_of",
    "inputs_of",
    "is_keras",
    "is_keras_net",
    "learning_rate_schedule",
    "load",
    "nan_guard",
    "predict_proba",
    "read_history",
    "read_run",
    "save",
    "save_weights",
    "source_file",
    "stage_of",
    "with_hparams",
]
