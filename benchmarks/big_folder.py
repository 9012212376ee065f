"""How fast `fetch` reads a big folder of photos, and how much memory it holds doing it.

    .venv/bin/python benchmarks/big_folder.py                    # 5,000 JPEGs of ~1 megapixel
    .venv/bin/python benchmarks/big_folder.py --images 500 --size 64

Writes a folder of class folders of JPEG photos (smooth colour fields with grain, about 1,200 x
900 pixels, as a camera's are at a megapixel), untimed, then reads it in fresh processes, the
file cache warmed for both:
- bare: a single-process Pillow loop (open, convert, LANCZOS resize, stack), what a script of
  one's own would do;
- pipeline: the image_folder source as `fetch` reads it (every file decoded on every core,
  hashed for the copies check, and summarised).
It prints each one's images per second and their ratio, and each one's peak memory (the
reading process and its largest worker) against the size of the arrays it returns.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from harness import PYTHON, quiet_env, ratio, run

CLASSES = ("a", "b", "c", "d", "e")
WIDTH, HEIGHT = 1200, 900

# Both sides report the same way: seconds spent reading, images read, the arrays' bytes, and
# resident memory: this process's before reading (the interpreter with its imports) and at its
# peak, and the peak of it and its workers together, sampled every 20 ms.
REPORT = """
import json, resource, threading, time
import psutil
me = psutil.Process()
before = me.memory_info().rss
together = [before, 0]
def sample():
    while True:
        procs = [me, *me.children(recursive=True)]
        rss = 0
        for proc in procs:
            try:
                rss += proc.memory_info().rss
            except psutil.Error:
                pass
        together[0], together[1] = max(together[0], rss), max(together[1], len(procs) - 1)
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
def report(start, n, nbytes):
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(dict(seconds=seconds, images=n, nbytes=nbytes, peak=peak, before=before,
                          together=together[0], processes=together[1])))
"""
BARE_SCRIPT = f"""
import sys, time
from pathlib import Path
import numpy as np
from PIL import Image
{REPORT}
folder, size, rgb = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "rgb"
start = time.perf_counter()
files = sorted(p for p in folder.rglob("*.jpg"))
pixels = []
for path in files:
    with Image.open(path) as image:
        small = image.convert("RGB" if rgb else "L").resize((size, size), Image.Resampling.LANCZOS)
        pixels.append(np.asarray(small, dtype=np.uint8))
x = np.stack(pixels)
report(start, len(x), x.nbytes)
"""
PIPELINE_SCRIPT = f"""
import sys, time
from pathlib import Path
from pipeline.core.config import source_of
from pipeline.data.sources import fetch
{REPORT}
folder, size, color = sys.argv[1], int(sys.argv[2]), sys.argv[3]
source = source_of(dict(kind="image_folder", name="big", path=folder, image_size=size,
                        color="rgb" if color == "rgb" else "grayscale"))
start = time.perf_counter()
fetched = fetch(source, Path(folder).parent / "downloads", mirror=None)
x = fetched.arrays["x"]
report(start, len(x), x.nbytes)
"""


def write_photo(path: Path, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    # A coarse colour field blown up smoothly, with grain: JPEG compresses it as it does a
    # photo (~100-300 kB at this size), not as noise (several MB) or a flat fill (a few kB).
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    field = np.asarray(coarse.resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC), np.int16)
    grain = rng.integers(-12, 13, field.shape, dtype=np.int16)
    Image.fromarray(np.clip(field + grain, 0, 255).astype(np.uint8)).save(path, quality=90)


def write_folder(root: Path, images: int) -> int:
    """The class folders of `images` photos; their bytes on disk."""
    paths = [root / CLASSES[i % len(CLASSES)] / f"photo_{i:05d}.jpg" for i in range(images)]
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor() as pool:
        list(pool.map(write_photo, paths, range(images), chunksize=32))
    return sum(path.stat().st_size for path in paths)


def measure(label: str, script: str, folder: Path, size: int, color: str) -> dict:
    for path in folder.rglob("*.jpg"):  # the file cache warm for whichever side runs first
        path.read_bytes()
    _, out = run(label, [PYTHON, "-c", script, str(folder), str(size), color], quiet_env())
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=128, help="image_size of the source")
    parser.add_argument("--color", choices=("rgb", "grayscale"), default="rgb")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="big_folder_") as scratch:
        folder = Path(scratch) / "photos"
        on_disk = write_folder(folder, args.images)
        print(f"{args.images} JPEGs of {WIDTH}x{HEIGHT}, {on_disk / 1e6:.0f} MB on disk")
        bare = measure("bare", BARE_SCRIPT, folder, args.size, args.color)
        piped = measure("pipeline", PIPELINE_SCRIPT, folder, args.size, args.color)
    if bare["images"] != piped["images"]:
        sys.exit(f"error: bare read {bare['images']} images, the pipeline {piped['images']}")
    mb = 1e6
    for label, m in (("bare", bare), ("pipeline", piped)):
        print(
            f"{label:9s} {m['images'] / m['seconds']:7.1f} images/s ({m['seconds']:.1f} s); "
            f"output {m['nbytes'] / mb:.0f} MB; peak {m['peak'] / mb:.0f} MB "
            f"(interpreter with imports {m['before'] / mb:.0f} MB); with its "
            f"{m['processes']} workers {m['together'] / mb:.0f} MB"
        )
    speed = ratio(bare["seconds"], piped["seconds"])
    held = (piped["peak"] - piped["before"]) / piped["nbytes"]
    print(f"speed-up: {speed}x the bare loop (target 1.7 on 2 cores)")
    print(f"memory: peak over the interpreter = {held:.2f}x the output (target at most 2)")


if __name__ == "__main__":
    main()
