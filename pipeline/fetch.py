"""Stage fetch: one source, read from a local path or downloaded (or taken from a mirror
folder), verified and checked, as arrays.

    python -m pipeline.fetch source=mnist|sign_digits|circles|<your source>

Writes data/raw/<source>.npz and its data summary, data/raw/<source>.json (samples per class,
image sizes and modes, columns and types, exact copies, dropped files); verified downloads are
kept in data/downloads/<source>/.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from pipeline.core import config
from pipeline.core.cli import stage
from pipeline.core.files import all_or_none, save_npz
from pipeline.data.checks import summary_file, write_summary
from pipeline.data.sources import fetch

log = logging.getLogger(__name__)


@stage("fetch", reads=("source", "mirror", "paths"))
def main(cfg: DictConfig) -> None:
    settings: config.FetchConfig = config.load(cfg)
    source = settings.source
    downloads = settings.paths.write.root / "data" / "downloads"
    mirror = Path(settings.mirror) if settings.mirror else None
    if mirror is not None:
        log.info("taking %s from the mirror %s", source.name, mirror)

    fetched = fetch(source, downloads, mirror)

    out = settings.paths.write.raw_file(source.name)
    with all_or_none(out, summary_file(out)):
        save_npz(out, **fetched.arrays)
        write_summary(out, fetched.summary)
    log.info("%s: %s", out, {key: value.shape for key, value in fetched.arrays.items()})
    log.info("data summary: %s", summary_file(out))


if __name__ == "__main__":
    main()
