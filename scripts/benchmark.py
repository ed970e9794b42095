"""Benchmarks: prints a table per section and writes all results to a json file.

  python scripts/benchmark.py [--sections ops] [--repeats 15] [--json output/benchmark.json]

Sections: ops (custom ops against stock-TF formulations). Targets are reported, never asserted.
"""
import json
import os
import platform
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.DEFINE_multi_string("sections", ["ops"], "Sections to run: ops.")
REPEATS = flags.DEFINE_integer("repeats", 15, "Timed repetitions per case (median reported).")
JSON = flags.DEFINE_string("json", "output/benchmark.json", "Where to write the results.")

OPS_COLUMNS = [("case", "case", "{}"), ("baseline", "baseline", "{}"), ("op_ms", "ours ms", "{:.2f}"),
               ("baseline_ms", "baseline ms", "{:.2f}"), ("speedup", "speed-up", "{:.1f}x"),
               ("target", "target", "{:.0f}x"), ("floor_ms", "floor ms", "{:.3f}")]


def main(argv):
    del argv
    import tensorflow as tf

    from lhrcnn.bench import ops_bench
    from lhrcnn.bench.timing import format_table

    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "tensorflow": tf.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S")}}
    for section in FLAGS.value:
        if section == "ops":
            rows, extra = ops_bench.run(REPEATS.value)
            print(f"\n== ops (copy bandwidth {extra['copy_bandwidth_gb_s']:.1f} GB/s, "
                  f"{os.cpu_count()} cores, median of {REPEATS.value}) ==")
            print(format_table(rows, OPS_COLUMNS))
            results["ops"] = {"rows": rows, **extra}
        else:
            raise app.UsageError(f"unknown section {section!r} (known: ops)")
    os.makedirs(os.path.dirname(os.path.abspath(JSON.value)), exist_ok=True)
    tmp = JSON.value + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, JSON.value)
    print(f"\nwrote {JSON.value}")


if __name__ == "__main__":
    app.run(main)
