"""Stage fetch: one source, downloaded (or read from a mirror folder), verified, as arrays.

    python -m pipeline.fetch source=mnist|sign_digits|circles

Writes data/raw/<source>.npz; verified downloads are kept in data/downloads/.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from pipeline.core import config
from pipeline.core.cli import stage
from pipeline.core.files import save_npz
from pipeline.data.sources import fetch_mnist, fetch_sign_digits, make_circles

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
        arrays = fetch_mnist(source, downloads, mirror)
    elif isinstance(source, config.SignDigitsSource):
        arrays = fetch_sign_digits(source, downloads, mirror)
    else:
        arrays = make_circles(source)

    out = settings.paths.write.raw_file(source.name)
    save_npz(out, **arrays)
    log.info("%s: %s", out, {key: value.shape for key, value in arrays.items()})


if __name__ == "__main__":
    main()
