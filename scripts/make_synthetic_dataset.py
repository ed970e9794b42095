"""Writes the synthetic shapes dataset (COCO json + JPEGs) that the default experiment trains on.

  python scripts/make_synthetic_dataset.py --output data/synthetic/train --num-images 2000 --seed 1
  python scripts/make_synthetic_dataset.py --output data/synthetic/val --num-images 200 --seed 2

Writes DIR/images/*.jpg and, last, DIR/annotations.json. A folder that already holds the same
dataset (same size, seed and generator version, all images present) is left alone unless --force.
"""
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

OUTPUT = flags.DEFINE_string("output", None, "Output folder (gets images/ and annotations.json).", required=True)
NUM_IMAGES = flags.DEFINE_integer("num-images", 2000, "Number of images.", lower_bound=1)
SEED = flags.DEFINE_integer("seed", 1, "Seed; image i depends only on (seed, i).")
WORKERS = flags.DEFINE_integer("workers", 2, "Worker processes (1 = none).", lower_bound=1)
QUALITY = flags.DEFINE_integer("quality", 92, "JPEG quality.", lower_bound=1, upper_bound=100)
FORCE = flags.DEFINE_boolean("force", False, "Regenerate even if the folder already holds this dataset.")


def main(argv):
    del argv
    from lhrcnn.data import synthetic
    if not FORCE.value and synthetic.is_complete(OUTPUT.value, NUM_IMAGES.value, SEED.value):
        print(f"{OUTPUT.value}: already holds {NUM_IMAGES.value} images of seed {SEED.value}; nothing to do "
              f"(--force regenerates)")
        return
    print(f"writing {NUM_IMAGES.value} images (seed {SEED.value}, {WORKERS.value} workers) to {OUTPUT.value}",
          flush=True)
    start = time.monotonic()
    path = synthetic.write_dataset(OUTPUT.value, NUM_IMAGES.value, SEED.value, workers=WORKERS.value,
                                   quality=QUALITY.value, progress=synthetic.ProgressPrinter())
    elapsed = time.monotonic() - start
    print(f"wrote {path} and {NUM_IMAGES.value} images in {elapsed:.1f} s "
          f"({NUM_IMAGES.value / elapsed:.1f} images/s)")


if __name__ == "__main__":
    app.run(main)
