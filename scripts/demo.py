"""Detections on your own images (the same code and flags as `lhrcnn demo`, which is `lhrcnn
predict` with a 0.5 score threshold and the demo/ output folder; see lhrcnn/cli.py):

  python scripts/demo.py --experiment experiments/lhrcnn/thundernet.snet146.synthetic
                         --checkpoint output/lhrcnn/thundernet.snet146.synthetic/model_dump
                         [--output DIR] [--score-threshold 0.5] [--verbose] IMAGE [IMAGE ...]

Each image is preprocessed as the eval pipeline does (eval short/max side, mean, padding); for
each, <output>/<name>_detections.png (boxes, class names, scores drawn) and
<output>/<name>_detections.json are written, each atomically. Every image is read before the
detector is built; nothing is written when one is missing or not an image. Default output:
output/<user>/<experiment>/demo/.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lhrcnn import cli  # noqa: E402

cli.define_absl_flags("demo")
main = cli.absl_main("demo")

if __name__ == "__main__":
    cli.run_script(main)
