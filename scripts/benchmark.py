"""Benchmarks: prints a table per section and writes all results to a json file (the same code and
flags as `lhrcnn benchmark`; see lhrcnn/cli.py):

  python scripts/benchmark.py [--sections ops --sections models --sections throughput --sections export
                               --sections distribute --sections family] [--models r101,xception,synthetic]
                              [--family-models thundernet_snet49,thundernet_snet146,...]
                              [--repeats 15] [--peer] [--json output/benchmark.json]

Sections: ops (custom ops against stock-TF formulations), models (whole detectors: latency, GFLOP,
floor, stage split, training step), throughput (training images/s of the default and R-101
experiments, the input pipeline alone, evaluation images/s), export (the SavedModel's latency with
stock and custom ops, batch 1 and 8, next to the in-process detector), distribute (training on 1 and 2
logical CPU devices and 1 and 2 local workers, scaling efficiency, and the R-101 all-reduce cost on 8
GPUs), family (ThunderNet SNet49/146/535 at 320x320, DetNet-59 FPN and Double-Head R-50-FPN at 800x1344:
batch-1 CPU latency on all cores and on one thread, next to the papers' images/s). Default: all six.
--peer also measures TF Model Garden's Faster R-CNN R-50-FPN in a separate environment (installed on
first use). Targets are reported, never asserted. The benchmarks/ package is the repository's.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lhrcnn import cli  # noqa: E402

cli.define_absl_flags("benchmark")
main = cli.absl_main("benchmark")

if __name__ == "__main__":
    cli.run_script(main)
