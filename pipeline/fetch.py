"""Stage fetch: one source, downloaded (or read from a mirror folder), verified, as arrays.

    python -m pipeline.fetch source=mnist|sign_digits|circles

Writes data/raw/<source>.npz; verified downloads are kept in data/downloads/.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from pipeline import config, datasets
from pipeline.cli import stage
from pipeline.files import save_npz

log = logging.getLogger(__name__)


@stage("fetch", reads=("source", "mirror", "paths"))
def main(cfg: DictConfig) -> None:
    settings: config.FetchConfig = config.load(cfg)
    source = settings.source
    downloads = settings.paths.write.root / "data" / "downloads"
    mirror = Path(settings.mirror) if settings.mirror else None
    if mirror is not None:
        log.info("taking %s from the mirror %s", source.name, mirror)

    if isinstance(source, config.MnistSource):
        arrays = datasets.fetch_mnist(source, downloads, mirror)
    elif isinstance(source, config.SignDigitsSource):
        arrays = datasets.fetch_sign_digits(source, downloads, mirror)
    else:
        arrays = datasets.make_circles(source)

    out = settings.paths.write.raw_file(source.name)
    save_npz(out, **arrays)
    log.info("%s: %s", out, {key: value.shape for key, value in arrays.items()})


if __name__ == "__main__":
    main()
