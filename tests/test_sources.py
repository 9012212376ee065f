"""The source kinds on data of one's own: an image folder, a pre-split folder, a table, a
generator, and every bad input stopped with one line naming what is wrong and the fix.

In-process and offline: archives are downloaded from file:// URLs, which urllib serves like any
other.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import stage_in
from tiny_data import write_image_folder, write_table

from pipeline.core.config import Color, source_of
from pipeline.core.errors import ConfigError, DataError
from pipeline.data.images import decode
from pipeline.data.sources import fetch


def fetched(tmp_path: Path, **section: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Fetch the source `section` (as conf/source/<name>.yaml would give it) into tmp_path."""
    source = source_of({"name": "mine", **section})
    result = fetch(source, tmp_path / "downloads", mirror=None)
    return result.arrays, result.summary


def one_line(error: pytest.ExceptionInfo, *mentions: str) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    for mention in mentions:
        assert mention in message, message
    return message


# ---- image_folder ----------------------------------------------------------------------------


def test_a_folder_of_class_folders_is_read_whole(tmp_path: Path) -> None:
    written = write_image_folder(tmp_path / "photos", per_class=6)

    arrays, summary = fetched(
        tmp_path, kind="image_folder", path=str(tmp_path / "photos"), image_size=16,
        color="grayscale",
    )  # fmt: skip

    assert arrays["x"].shape == (18, 16, 16) and arrays["x"].dtype == np.uint8
    assert arrays["class_names"].tolist() == ["cat", "dog", "fox"]
    names = arrays["names"].tolist()
    assert names == sorted(path.relative_to(tmp_path / "photos").as_posix() for path in written)
    assert "cat/more/cat_all_005.png" in names  # nested folders count, hidden files do not
    assert [arrays["class_names"][label] for label in arrays["y"]] == [
        n.split("/")[0] for n in names
    ]
    assert summary["classes"] == {"cat": 6, "dog": 6, "fox": 6}
    images = summary["images"]
    assert images["modes"] == {"L": 17, "RGB": 1}
    assert images["formats"] == {"JPEG": 9, "PNG": 9}
    assert images["sizes"] == {"distinct": 3, "smallest": "24x24", "largest": "31x57"}
    assert summary["duplicates"]["copies"] == 0 and summary["dropped"]["count"] == 0


def test_colour_and_class_order_are_the_configs(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "photos", per_class=3)

    arrays, _ = fetched(
        tmp_path, kind="image_folder", path=str(tmp_path / "photos"), image_size=8,
        color="rgb", class_names=["fox", "cat", "dog"],
    )  # fmt: skip

    assert arrays["x"].shape == (9, 8, 8, 3)
    assert arrays["class_names"].tolist() == ["fox", "cat", "dog"]
    assert arrays["y"][arrays["names"].tolist().index("fox/fox_all_000.jpg")] == 0


def test_a_photo_four_times_the_size_decodes_scaled_and_a_smaller_one_in_full() -> None:
    """A camera's JPEG decodes at a reduced scale (libjpeg's, at least twice the size asked):
    within a grey level of a full decode's LANCZOS, not the same pixels; one under four times
    the size asked decodes in full, pixel for pixel as before."""
    from PIL import Image

    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8))
    photo = coarse.resize((1200, 900), Image.Resampling.BICUBIC)
    for shape, scaled in (((1200, 900), True), ((255, 261), False)):
        file = io.BytesIO()
        photo.resize(shape).save(file, "JPEG", quality=90)
        with Image.open(file) as full:
            expected = np.asarray(full.convert("L").resize((64, 64), Image.Resampling.LANCZOS))
        difference = np.abs(decode(file.getvalue(), 64, Color.grayscale) - expected.astype(int))
        assert difference.max() == (1 if scaled else 0), shape


def test_train_val_test_folders_are_kept_as_the_split(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "photos", per_class=6, parts=("train", "val", "test"))

    arrays, summary = fetched(
        tmp_path, kind="image_folder", path=str(tmp_path / "photos"), image_size=8
    )

    assert {key: len(arrays[key]) for key in ("y", "y_val", "y_test")} == {
        "y": 18, "y_val": 6, "y_test": 6,
    }  # fmt: skip
    assert summary["parts"] == {"train": 18, "val": 6, "test": 6}
    assert all(name.startswith(("train/", "val/", "test/")) for name in arrays["names"])


def test_bad_files_are_named_all_at_once_or_skipped_and_counted(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_image_folder(photos, per_class=3)
    (photos / "cat" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (photos / "dog" / "empty.png").write_bytes(b"")
    (photos / "fox" / "notes.txt").write_text("an unsupported file")
    good = (photos / "fox" / "fox_all_000.jpg").read_bytes()
    (photos / "fox" / "cut.jpg").write_bytes(good[: len(good) // 2])
    section = {"kind": "image_folder", "path": str(photos), "image_size": 8}

    with pytest.raises(DataError) as error:
        fetched(tmp_path, **section)
    one_line(
        error, "4 of 13 files", "cat/broken.jpg", "dog/empty.png: empty file",
        "fox/notes.txt: unsupported type (.txt", "fox/cut.jpg", "source.on_bad_file=skip",
    )  # fmt: skip

    arrays, summary = fetched(tmp_path, **section, on_bad_file="skip")
    assert len(arrays["y"]) == 9
    assert summary["dropped"]["count"] == 4
    assert set(summary["dropped"]["files"]) == {
        "cat/broken.jpg", "dog/empty.png", "fox/notes.txt", "fox/cut.jpg",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("make", "mentions"),
    [
        (lambda root: None, ("does not exist", "conf/source/mine.yaml")),
        (lambda root: root.mkdir(), ("no image files in class folders", "one subfolder per class")),
        (
            lambda root: write_image_folder(root, classes=("cat",), per_class=3),
            ("a single class (cat)", "two or more"),
        ),
    ],
    ids=["missing folder", "empty folder", "one class"],
)
def test_a_folder_that_cannot_make_a_data_set_is_one_line(
    tmp_path: Path, make: Any, mentions: tuple[str, ...]
) -> None:
    make(tmp_path / "photos")

    with pytest.raises(DataError) as error:
        fetched(tmp_path, kind="image_folder", path=str(tmp_path / "photos"), image_size=8)
    one_line(error, *mentions)


def test_label_errata_relabel_files_and_name_unknown_ones(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "photos", per_class=3)
    section = {"kind": "image_folder", "path": str(tmp_path / "photos"), "image_size": 8}

    arrays, summary = fetched(tmp_path, **section, label_errata={"cat/cat_all_001.png": "fox"})
    names = arrays["names"].tolist()
    assert arrays["y"][names.index("cat/cat_all_001.png")] == 2
    assert summary["label_errata_changed"] == 1

    with pytest.raises(DataError) as error:
        fetched(tmp_path, **section, label_errata={"cat/nope.jpg": "fox"})
    one_line(error, "cat/nope.jpg is not a file")


def archive(folder: Path, into: Path, kind: str) -> Path:
    """`folder` packed as GitHub packs a repository: one top folder holding it."""
    if kind == "zip":
        with zipfile.ZipFile(into, "w") as bundle:
            for path in sorted(folder.rglob("*")):
                bundle.write(path, f"repo-main/{path.relative_to(folder)}")
    else:
        with tarfile.open(into, "w:gz") as bundle:
            bundle.add(folder, arcname="repo-main")
    return into


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_an_archive_url_is_verified_unpacked_and_read(tmp_path: Path, kind: str) -> None:
    write_image_folder(tmp_path / "photos" / "images", per_class=3)
    packed = archive(tmp_path / "photos", tmp_path / f"photos.{kind}", kind)
    digest = hashlib.sha256(packed.read_bytes()).hexdigest()
    section = {"kind": "image_folder", "url": packed.as_uri(), "folder": "images"}

    arrays, _ = fetched(tmp_path, **section, sha256=digest, image_size=8)
    assert len(arrays["y"]) == 9

    wrong = hashlib.sha256(b"another archive").hexdigest()
    with pytest.raises(DataError) as error:
        fetched(tmp_path / "again", **section, sha256=wrong, image_size=8)
    one_line(error, f"photos.{kind}", wrong, digest)
    downloads = tmp_path / "again" / "downloads"
    assert not downloads.exists() or not any(downloads.rglob("*.*"))


# ---- table -----------------------------------------------------------------------------------


def test_a_csv_with_a_text_label_and_a_category_becomes_codes_and_features(tmp_path: Path) -> None:
    write_table(tmp_path / "iris.csv", rows=60)

    arrays, summary = fetched(
        tmp_path, kind="table", path=str(tmp_path / "iris.csv"), label="species"
    )

    assert arrays["x"].shape == (60, 5) and arrays["x"].dtype == np.float32
    assert arrays["class_names"].tolist() == ["setosa", "versicolor", "virginica"]
    features = json.loads(str(arrays["features"]))
    assert [(f["name"], f["type"]) for f in features] == [
        ("sepal_length", "number"), ("sepal_width", "number"), ("petal_length", "number"),
        ("petal_width", "number"), ("pot", "category"),
    ]  # fmt: skip
    assert features[4]["categories"] == ["blue", "green", "red"]
    assert set(arrays["x"][:, 4].tolist()) <= {0.0, 1.0, 2.0}
    assert summary["columns"]["pot"] == {"type": "category", "missing": 0, "categories": 3}


def test_a_parquet_file_is_a_table_too(tmp_path: Path) -> None:
    import pandas as pd

    write_table(tmp_path / "iris.csv", rows=30)
    pd.read_csv(tmp_path / "iris.csv").to_parquet(tmp_path / "iris.parquet")

    arrays, _ = fetched(
        tmp_path, kind="table", path=str(tmp_path / "iris.parquet"), label="species"
    )
    assert arrays["x"].shape == (30, 5)


def edited_table(tmp_path: Path, change: Any) -> Path:
    write_table(tmp_path / "iris.csv", rows=30)
    lines = (tmp_path / "iris.csv").read_text().splitlines()
    change(lines)
    (tmp_path / "iris.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "iris.csv"


def test_missing_values_are_an_error_or_dropped_or_filled(tmp_path: Path) -> None:
    def blank(lines: list[str]) -> None:
        for row in (3, 7):
            cells = lines[row].split(",")
            cells[1] = ""
            lines[row] = ",".join(cells)

    path = str(edited_table(tmp_path, blank))
    section = {"kind": "table", "path": path, "label": "species"}

    with pytest.raises(DataError) as error:
        fetched(tmp_path, **section)
    one_line(error, "column sepal_width has 2 missing values", "source.missing")

    arrays, summary = fetched(tmp_path, **section, missing="drop")
    assert len(arrays["y"]) == 28 and summary["dropped"]["count"] == 2

    arrays, summary = fetched(tmp_path, **section, missing="fill")
    assert len(arrays["y"]) == 30
    assert summary["columns"]["sepal_width"]["filled_with"] == pytest.approx(
        float(np.median(np.delete(arrays["x"][:, 1], [2, 6])))
    )


@pytest.mark.parametrize(
    ("change", "section", "mentions"),
    [
        (lambda lines: None, {"label": "kind"}, ("no column kind", "species", "source.label")),
        (
            lambda lines: lines.__setitem__(5, lines[5].replace(lines[5].split(",")[0], "n/a", 1)),
            {},
            ("column sepal_length holds numbers but 1 values are text", "row 5: 'n/a'"),
        ),
        (
            lambda lines: lines.__setitem__(5, lines[5].replace(lines[5].split(",")[0], "n/a", 1)),
            {"features": {"sepal_length": "number", "pot": "category"}},
            ("column sepal_length is a number column", "source.features.sepal_length=category"),
        ),
        (
            lambda lines: lines.__setitem__(slice(1, None), [lines[1]] * (len(lines) - 1)),
            {},
            ("a single class",),
        ),
    ],
    ids=["no label column", "text among numbers", "text in a number column", "one class"],
)
def test_a_table_that_cannot_make_a_data_set_is_one_line(
    tmp_path: Path, change: Any, section: dict[str, Any], mentions: tuple[str, ...]
) -> None:
    path = edited_table(tmp_path, change)

    with pytest.raises(DataError) as error:
        fetched(tmp_path, **{"kind": "table", "path": str(path), "label": "species", **section})
    one_line(error, *mentions)


# ---- sklearn, idx and the schema -------------------------------------------------------------


def test_any_make_generator_is_a_source(tmp_path: Path) -> None:
    arrays, summary = fetched(
        tmp_path, kind="sklearn", generator="make_blobs",
        params={"n_samples": 30, "centers": 3, "random_state": 0},
    )  # fmt: skip

    assert arrays["x"].shape == (30, 2) and arrays["class_names"].tolist() == ["0", "1", "2"]
    assert summary["classes"] == {"0": 10, "1": 10, "2": 10}

    with pytest.raises(ConfigError) as error:
        fetched(tmp_path, kind="sklearn", generator="make_regression", params={"n_samples": 5})
    one_line(error, "make_regression does not make (points, classes)")


@pytest.mark.parametrize(
    ("section", "mentions"),
    [
        ({"kind": "folder"}, ("source.kind must be one of", "image_folder")),
        ({"kind": "table", "path": "x.csv", "label": "y", "colour": 1}, ("source.colour",)),
        ({"kind": "image_folder", "url": "http://x/a.zip"}, ("source.sha256",)),
        ({"kind": "image_folder", "path": "p", "sha256": "abc"}, ("'abc' is not a SHA-256",)),
    ],
    ids=["unknown kind", "unknown option", "url without checksum", "bad checksum"],
)
def test_a_bad_source_config_is_one_line(
    section: dict[str, Any], mentions: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError) as error:
        source_of({"name": "mine", **section})
    one_line(error, *mentions)


def test_idx_labels_from_one_are_renumbered_and_named(tmp_path: Path) -> None:
    from tiny_data import idx_gz

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 4, 4), np.uint8)
    files = {}
    for name, array in (
        ("emnist-letters-train-images-idx3-ubyte.gz", images),
        ("emnist-letters-train-labels-idx1-ubyte.gz", np.array([1, 2, 3, 1, 2, 3], np.uint8)),
        ("emnist-letters-test-images-idx3-ubyte.gz", rng.integers(0, 255, (3, 4, 4), np.uint8)),
        ("emnist-letters-test-labels-idx1-ubyte.gz", np.array([3, 2, 1], np.uint8)),
    ):
        data = idx_gz(array)
        (tmp_path / "mirror" / "letters").mkdir(parents=True, exist_ok=True)
        (tmp_path / "mirror" / "letters" / name).write_bytes(data)
        files[name] = hashlib.sha256(data).hexdigest()
    source = source_of({
        "name": "letters", "kind": "idx", "files": files, "transpose": True,
        "class_names": ["a", "b", "c"],
    })  # fmt: skip

    arrays = fetch(source, tmp_path / "downloads", tmp_path / "mirror").arrays

    assert arrays["y"].tolist() == [0, 1, 2, 0, 1, 2] and arrays["y_test"].tolist() == [2, 1, 0]
    assert arrays["class_names"].tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(arrays["x"], images.transpose(0, 2, 1))


# ---- the stage: one line, nothing left -------------------------------------------------------


def test_fetch_stops_on_bad_data_with_one_line_and_writes_nothing(project: Path) -> None:
    photos = project / "photos"
    write_image_folder(photos, per_class=3)
    (photos / "dog" / "broken.png").write_bytes(b"\x89PNG but nothing after")
    (project / "conf" / "source" / "mine.yaml").write_text(
        "kind: image_folder\nname: mine\npath: photos\nimage_size: 8\n"
    )

    result = stage_in(project, "fetch", "source=mine", check=False)

    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: 1 of 10 files") and "dog/broken.png" in lines[-1]
    assert "Traceback" not in result.stderr
    assert not (project / "data" / "raw").exists()


def test_a_class_too_small_for_k_folds_is_one_line_before_any_training() -> None:
    from conftest import compose_config

    from pipeline import crossval
    from pipeline.core import config
    from pipeline.data.splits import Split

    settings = config.load(compose_config(overrides=("experiment=circles/tuned",)))
    y = np.array([0] * 8 + [1] * 3, np.uint8)
    x = np.zeros((len(y), 2), np.float32)
    data = Split(x[:7], y[:7], x[7:9], y[7:9], x[9:], y[9:], ["in", "out"])

    with pytest.raises(DataError) as error:
        crossval.fold_accuracies(settings, data)
    one_line(error, "class out has 3 samples", "5-fold cross-validation (train.cv_folds)")


def test_table_rows_encode_raw_rows_as_fetch_did_and_name_what_they_cannot() -> None:
    import pandas as pd

    from pipeline.data import table_rows

    features = [
        {"name": "size", "type": "number", "fill": 2.5},
        {"name": "colour", "type": "category", "categories": ["blue", "red"]},
        {"name": "code", "type": "category", "categories": ["3", "7"]},
    ]
    frame = pd.DataFrame({"size": ["1.5", "", "4"], "colour": ["red", "blue", "red"],
                          "code": [7, 3.0, "7"], "label": ["a", "b", "c"]})  # fmt: skip

    x = table_rows.encode(frame, features)

    np.testing.assert_array_equal(x, [[1.5, 1, 1], [2.5, 0, 0], [4, 1, 1]])
    back = table_rows.decode(x, features)
    assert back["colour"].tolist() == ["red", "blue", "red"] and back["code"].tolist()[1] == "3"
    for change, message in (
        ({"colour": ["red", "green", "red"]}, "column colour: 'green' is not one of its"),
        ({"size": ["1", "big", "2"]}, "column size: row 2 holds 'big', not a number"),
        ({"code": [7, None, 3]}, "column code: row 2 has no value"),
    ):
        with pytest.raises(ValueError, match=message):
            table_rows.encode(frame.assign(**change), features)
