"""Each task's registered champion on raw source data, after a full `dvc repro`.

    ./dev.sh python benchmarks/champions_on_raw_data.py [--datasets ../shared/datasets]

Feeds every champion (`models:/<task>@champion`, from the repository's MLflow store) inputs as
the sources give them, read the way `pipeline.predict` reads a user's files: MNIST's official
test IDX files, the sign-digit photos of each test part (the split file only says which photos
those are), circles' test points as the generator makes them, and 1,000 fresh circles points of
the same generator with another seed. Prints each accuracy beside the one `evaluate` reported
for the same points.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
import numpy as np
import yaml
from sklearn.datasets import make_circles

from pipeline import predict, tracking
from pipeline.core.config import Color
from pipeline.data.images import decode
from pipeline.data.sources import read_idx

ROOT = Path(__file__).resolve().parents[1]


def test_part(task: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(ROOT / "data" / "split" / f"{task}.npz") as split:
        return split["x_test"], split["y_test"]


def rows_of(pool: np.ndarray, chosen: np.ndarray) -> list[int]:
    """Where each of `chosen` stands in `pool` (exact equality)."""
    index = {row.tobytes(): i for i, row in enumerate(pool.reshape(len(pool), -1))}
    return [index[row.tobytes()] for row in chosen.reshape(len(chosen), -1)]


def score(task: str, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    model = mlflow.pyfunc.load_model(f"models:/{task}@champion")
    version = mlflow.MlflowClient().get_model_version_by_alias(task, "champion")
    reported = mlflow.get_run(version.run_id).data.metrics["test_accuracy"]
    predicted = predict.probabilities(model.predict(x.astype(np.float32))).argmax(axis=1)
    return float(np.mean(predicted == y)), reported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    args = parser.parse_args()
    mlflow.set_tracking_uri(tracking.tracking_uri())
    import keras

    keras.utils.disable_interactive_logging()

    mnist = args.datasets / "mnist"
    images = read_idx(mnist / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(mnist / "t10k-labels-idx1-ubyte.gz")
    accuracy, reported = score("mnist", images, labels)
    print(f"mnist (official test IDX files): {accuracy:.4f}, reported {reported:.4f}")

    photos = sorted((args.datasets / "sign_language_digits" / "Dataset").glob("[0-9]/*"))
    pixels = np.stack([decode(photo.read_bytes(), 64, Color.grayscale) for photo in photos])
    for task in ("sign_digits", "sign_digits_01"):
        x_test, y_test = test_part(task)
        rows = rows_of(pixels, x_test)
        accuracy, reported = score(task, pixels[rows], y_test)
        print(f"{task} ({len(rows)} test photos): {accuracy:.4f}, reported {reported:.4f}")

    params = yaml.safe_load((ROOT / "conf" / "source" / "circles.yaml").read_text())["params"]
    points, _ = make_circles(**params)
    points = points.astype(np.float32)
    x_test, y_test = test_part("circles")
    x = points[rows_of(points, x_test)]
    accuracy, reported = score("circles", x, y_test)
    print(f"circles (test points, generated afresh): {accuracy:.4f}, reported {reported:.4f}")
    fresh, truth = make_circles(
        n_samples=1000, noise=params["noise"], factor=params["factor"], random_state=12345
    )
    accuracy, _ = score("circles", fresh, truth)
    print(f"circles (1,000 fresh points, seed 12345): {accuracy:.4f}")


if __name__ == "__main__":
    main()
