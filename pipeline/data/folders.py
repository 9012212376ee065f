"""The image_folder kind: one subfolder per class, as Keras' image_dataset_from_directory and
Hugging Face's imagefolder lay them out, or train/, val/ (or validation/) and test/ folders of
them, kept as the split.

    photos/cat/001.jpg, photos/dog/a/002.png, ...          classes from the folder names
    photos/train/cat/001.jpg, photos/test/cat/009.jpg, ...  the split as given

Files and folders whose names start with "." are skipped (.DS_Store, .git). Every other file is
decoded; one that cannot be is a bad file: all of them are named in one error, or dropped and
counted with `on_bad_file: skip`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.core.config import ImageFolderSource, OnBadFile
from pipeline.core.errors import DataError
from pipeline.data.checks import EXAMPLES, Fetched, counted
from pipeline.data.images import IMAGE_SUFFIXES, ImageFile, read_images
from pipeline.data.origin import locate, verify_content

# Folder names of a split given as folders, and the part each stands for.
PART_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
SHOWN = 5  # bad files named in an error line


def visible(folder: Path) -> list[Path]:
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))


def files_under(folder: Path) -> list[Path]:
    """Every file under `folder`, at any depth, hidden files and folders left out, sorted."""
    found = []
    for parent, folders, names in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        found += [Path(parent) / name for name in names if not name.startswith(".")]
    return sorted(found)


def class_folders(top: Path) -> dict[str, dict[str, list[Path]]]:
    """{part: {class: files}}: part "all" for class folders, else train/val/test as given."""
    entries = visible(top)
    folders = [entry for entry in entries if entry.is_dir()]
    if (
        folders
        and {f.name for f in folders} <= set(PART_FOLDERS)
        and "train" in {f.name for f in folders}
    ):
        return {
            PART_FOLDERS[part.name]: {c.name: files_under(c) for c in visible(part) if c.is_dir()}
            for part in folders
        }
    return {"all": {folder.name: files_under(folder) for folder in folders}}


def fetch_image_folder(source: ImageFolderSource, downloads: Path, mirror: Path | None) -> Fetched:
    origin = locate(source, downloads, mirror)
    top = origin.top / source.folder if source.folder else origin.top
    if not top.is_dir():
        raise DataError(
            f"{top}: not a folder; source.path (or source.folder) must name the folder that "
            "holds one subfolder per class"
        )
    parts = class_folders(top)
    found = sorted({name for classes in parts.values() for name in classes})
    if not any(files for classes in parts.values() for files in classes.values()):
        raise DataError(
            f"{top}: no image files in class folders; put one subfolder per class holding its "
            f"images ({', '.join(IMAGE_SUFFIXES)}), or train/, val/ and test/ folders of them"
        )
    class_names = source.class_names or found
    if set(class_names) != set(found):
        raise DataError(
            f"source.class_names {class_names} differ from the class folders in {top} {found}; "
            "list the folders' names, or null to take them all"
        )
    if "train" in parts and not all(parts["train"].get(name) for name in class_names):
        lacking = next(name for name in class_names if not parts["train"].get(name))
        raise DataError(f"{top}/train: class {lacking} has no training images; add some")

    listed = sorted(
        (path.relative_to(top).as_posix(), part, name)
        for part, classes in parts.items()
        for name in class_names
        for path in classes.get(name, [])
    )
    relative = [name for name, _, _ in listed]
    pixels, infos = read_images([top / name for name in relative], source.image_size, source.color)

    bad = {name: info for name, info in zip(relative, infos, strict=True) if isinstance(info, str)}
    if source.content_sha256 is not None:
        # Named as `sha256sum` names them from the mirror's root.
        prefix = "/".join(filter(None, (source.mirror_folder, source.folder)))
        digests = [
            (f"{prefix}/{name}", info.sha256)
            for name, info in zip(relative, infos, strict=True)
            if not isinstance(info, str)
        ]
        verify_content(origin, digests, source.content_sha256)
    if bad and source.on_bad_file == OnBadFile.error:
        shown = "; ".join(f"{name}: {why}" for name, why in list(bad.items())[:SHOWN])
        more = f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        raise DataError(
            f"{len(bad)} of {len(listed)} files in {top} cannot be read as images ({shown}{more}); "
            "fix or remove them, or set source.on_bad_file=skip to leave them out"
        )
    keep = [i for i, info in enumerate(infos) if not isinstance(info, str)]
    names = [relative[i] for i in keep]
    labels = np.array([class_names.index(listed[i][2]) for i in keep])
    part_of = np.array([listed[i][1] for i in keep])
    changed = _apply_errata(source, names, labels, class_names, set(relative))
    images = [info for info in infos if isinstance(info, ImageFile)]

    arrays = _by_part(pixels, labels.astype(np.uint8 if len(class_names) < 256 else np.int32),
                      part_of)  # fmt: skip
    arrays.update(names=np.array(names), class_names=np.array(class_names))
    if source.label_errata:
        arrays["errata_changed"] = np.array(changed)
    sizes = [(image.width, image.height) for image in images]
    summary = {
        "images": {
            "formats": counted([image.format for image in images]),
            "modes": counted([image.mode for image in images]),
            "sizes": {
                "distinct": len(set(sizes)),
                "smallest": "{}x{}".format(*min(sizes, key=lambda s: s[0] * s[1])),
                "largest": "{}x{}".format(*max(sizes, key=lambda s: s[0] * s[1])),
            },
            "resized_to": f"{source.image_size}x{source.image_size}",
            "color": source.color.value,
        },
        "dropped": {"count": len(bad), "files": dict(list(bad.items())[:EXAMPLES])},
    }
    if source.label_errata:
        summary["label_errata_changed"] = changed
    return Fetched(arrays, summary)


def _apply_errata(
    source: ImageFolderSource,
    names: list[str],
    labels: np.ndarray,
    class_names: list[str],
    listed: set[str],
) -> int:
    """Relabel the files `source.label_errata` corrects (if `apply_errata`); how many changed."""
    changed = 0
    for name, label in source.label_errata.items():
        if name not in listed:
            raise DataError(f"source.label_errata: {name} is not a file of the data set")
        if label not in class_names:
            raise DataError(
                f"source.label_errata.{name}: {label} is not one of the classes {class_names}"
            )
        if source.apply_errata and name in names:
            index = names.index(name)
            changed += int(labels[index] != class_names.index(label))
            labels[index] = class_names.index(label)
    return changed


def _by_part(x: np.ndarray, y: np.ndarray, part_of: np.ndarray) -> dict[str, np.ndarray]:
    """The raw file's arrays: `x`, `y` (all samples, or the training part where the folders
    give the split) and `x_val`, `y_val`, `x_test`, `y_test` for the parts given."""
    if set(part_of) == {"all"}:
        return {"x": x, "y": y}
    arrays = {}
    for part, prefix in (("train", ""), ("val", "_val"), ("test", "_test")):
        rows = part_of == part
        if rows.any():
            arrays[f"x{prefix}"], arrays[f"y{prefix}"] = x[rows], y[rows]
    return arrays
