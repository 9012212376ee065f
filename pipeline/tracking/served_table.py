"""A table model as MLflow logs and serves it: raw rows in (a data frame, categories as text),
class probabilities out.

Logged as a model from code: MLflow runs this file to load the model, with table_rows.py logged
beside it (code_paths) and the Keras model and the table's features as artifacts, so that
serving it (`mlflow models serve`, `pipeline.predict`) needs none of this project's code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel, PythonModelContext


class TableModel(PythonModel):
    # MLflow would read predict's type hints as the input schema and warn, on the stderr of
    # every stage that imports this, that `Any` is none it supports: the signature is given
    # when the model is logged (logged_model.py). MLflow's own switch for that, as ChatModel's.
    _skip_type_hint_validation = True

    def load_context(self, context: PythonModelContext) -> None:
        import keras
        import table_rows  # logged beside this file

        table_rows.one_hot_columns()  # the model's encoding layer, known to Keras first
        self.encode = table_rows.encode
        self.features = json.loads(Path(context.artifacts["features"]).read_text())
        self.net = keras.saving.load_model(context.artifacts["model"])

    def predict(
        self, context: PythonModelContext, model_input: Any, params: dict[str, Any] | None = None
    ) -> Any:
        return self.net.predict(self.encode(model_input, self.features), verbose=0)


mlflow.models.set_model(TableModel())
