"""Benchmarks: prints a table per section and writes all results to a json file.

  python scripts/benchmark.py [--sections ops --sections models --sections throughput --sections export
                               --sections distribute --sections family] [--models r101,xception,synthetic]
                              [--family_models thundernet_snet49,thundernet_snet146,...]
                              [--repeats 15] [--peer] [--json output/benchmark.json]

Sections: ops (custom ops against stock-TF formulations), models (whole detectors: latency, GFLOP,
floor, stage split, training step), throughput (training images/s of the default and R-101
experiments, the input pipeline alone, evaluation images/s), export (the SavedModel's latency with
stock and custom ops, batch 1 and 8, next to the in-process detector), distribute (training on 1 and 2
logical CPU devices and 1 and 2 local workers, scaling efficiency, and the R-101 all-reduce cost on 8
GPUs), family (ThunderNet SNet49/146/535 at 320x320, DetNet-59 FPN and Double-Head R-50-FPN at 800x1344:
batch-1 CPU latency on all cores and on one thread, next to the papers' images/s). Default: all six. --peer also measures TF Model Garden's Faster R-CNN
R-50-FPN in a separate environment (installed on first use). Targets are reported, never asserted.
"""
import json
import os
import platform
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.DEFINE_multi_string("sections", ["ops", "models", "throughput", "export", "distribute", "family"],
                                  "Sections to run: ops, models, throughput, export, distribute, family.")
FAMILY = flags.DEFINE_list("family_models", None, "Models of the family section (default: all; see "
                           "benchmarks/family_bench.py).")
DIST_STEPS = flags.DEFINE_integer("distribute_steps", 10, "Timed training steps per case (distribute).")
TRAIN_STEPS = flags.DEFINE_integer("train_steps", 30, "Timed training steps of the default model (throughput).")
R101_STEPS = flags.DEFINE_integer("r101_steps", 2, "Timed training steps of R-101 at 800x1333 (0 = skip).")
MODELS = flags.DEFINE_list("models", ["r101", "xception", "synthetic"], "Models of the models section.")
PEER = flags.DEFINE_boolean("peer", False, "Also time TF Model Garden's Faster R-CNN R-50-FPN (models section).")
REPEATS = flags.DEFINE_integer("repeats", 15, "Timed repetitions per case (median reported).")
JSON = flags.DEFINE_string("json", "output/benchmark.json", "Where to write the results.")

OPS_COLUMNS = [("case", "case", "{}"), ("baseline", "baseline", "{}"), ("op_ms", "ours ms", "{:.2f}"),
               ("baseline_ms", "baseline ms", "{:.2f}"), ("speedup", "speed-up", "{:.1f}x"),
               ("target", "target", "{:.0f}x"), ("floor_ms", "floor ms", "{:.3f}")]


MODEL_COLUMNS = [("model", "model", "{}"), ("input", "input", "{}"), ("latency_s", "latency s", "{:.3f}"),
                 ("gflop", "GFLOP", "{:.1f}"), ("floor_s", "floor s", "{:.3f}"), ("x_floor", "x floor", "{:.2f}"),
                 ("train_step_s", "train step s", "{:.2f}")]
THROUGHPUT_COLUMNS = [("what", "what", "{}"), ("input", "input (short/max or HxW)", "{}"),
                      ("images_per_s", "images/s", "{:.2f}"), ("s_per_step", "s/step", "{:.3f}"),
                      ("images_per_step", "images/step", "{}"), ("x_training", "x training", "{:.0f}x")]
STAGE_COLUMNS = [("model", "model", "{}")] + [
    (f"{s}_{u}", f"{s} {'%' if u == 'pct' else 'ms'}", "{:.1f}")
    for s in ("backbone", "rpn_proposals", "thin_map", "rcnn_subnet", "postprocess") for u in ("ms", "pct")]


def main(argv):
    del argv
    import tensorflow as tf

    from benchmarks import ops_bench
    from benchmarks.timing import format_table

    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "tensorflow": tf.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S")}}
    for section in FLAGS.value:
        if section == "ops":
            rows, extra = ops_bench.run(REPEATS.value)
            print(f"\n== ops (copy bandwidth {extra['copy_bandwidth_gb_s']:.1f} GB/s, "
                  f"{os.cpu_count()} cores, median of {REPEATS.value}) ==")
            print(format_table(rows, OPS_COLUMNS))
            results["ops"] = {"rows": rows, **extra}
        elif section == "models":
            from benchmarks import model_bench
            rows, extra = model_bench.run(MODELS.value, repeats=max(3, REPEATS.value // 3))
            peer = None
            if PEER.value:
                from benchmarks import peer_env
                peer = peer_env.run_peer()
                extra["peer"] = peer
            print(f"\n== models (batch 1, median; GEMM {extra['gemm_gflops']:.0f} GFLOP/s sets the floor) ==")
            print(format_table(rows, MODEL_COLUMNS))
            print("\nstage split (ms, % of the whole model's latency)")
            print(format_table(rows, STAGE_COLUMNS))
            if peer:
                print("\npeer (TF Model Garden, same run):", ", ".join(f"{k} {v:.3g}" for k, v in peer.items()))
            results["models"] = {"rows": rows, **extra}
        elif section == "throughput":
            from benchmarks import throughput_bench
            rows, extra = throughput_bench.run(train_steps=TRAIN_STEPS.value, r101_steps=R101_STEPS.value)
            print(f"\n== throughput ({os.cpu_count()} cores; training on one replica) ==")
            print(format_table(rows, THROUGHPUT_COLUMNS))
            ratio = extra["pipeline_vs_training"]
            print(f"input pipeline / training consumption: {ratio:.1f}x (target >= 3x: "
                  f"{'met' if ratio >= 3 else 'NOT met'})")
            results["throughput"] = {"rows": rows, **extra}
        elif section == "export":
            from benchmarks import export_bench
            rows, extra = export_bench.run(repeats=max(3, REPEATS.value // 2))
            print(f"\n== export ({extra['input']} -> eval {extra['eval_size']}, {extra['cpus']} cores) ==")
            print(format_table(rows, export_bench.COLUMNS))
            print(extra["note"])
            results["export"] = {"rows": rows, **extra}
        elif section == "distribute":
            from benchmarks import distribute_bench
            rows, extra = distribute_bench.run(steps=DIST_STEPS.value)
            print(f"\n== distribute (default experiment, {extra['input']}, 2 images per replica, "
                  f"{extra['cpus']} cores shared by all replicas) ==")
            print(format_table(rows, distribute_bench.COLUMNS))
            comm = extra["communication"]
            print(f"\nall-reduce per step, {comm['model']} on {comm['gpus']} GPUs: "
                  f"{comm['trainable_parameters'] / 1e6:.1f} M trainable parameters = "
                  f"{comm['gradient_bytes'] / 2 ** 20:.0f} MiB of float32 gradients; a ring all-reduce moves "
                  f"{comm['bytes_per_gpu_per_step'] / 2 ** 20:.0f} MiB in and out of every GPU:")
            for link, ms in comm["allreduce_ms"].items():
                print(f"  {link}: {ms:.1f} ms")
            results["distribute"] = {"rows": rows, **extra}
        elif section == "family":
            from benchmarks import family_bench
            rows, extra = family_bench.run(FAMILY.value or tuple(family_bench.MODELS), repeats=max(5, REPEATS.value))
            print(f"\n== family (batch 1, median after warm-up; {extra['cpus']} cores; GEMM peak "
                  f"{extra['gemm_gflops'] / 2:.0f} GMAC/s) ==")
            print(format_table(rows, family_bench.COLUMNS))
            results["family"] = {"rows": rows, **extra}
        else:
            raise app.UsageError(f"unknown section {section!r} (known: ops, models, throughput, export, distribute, "
                                 "family)")
    os.makedirs(os.path.dirname(os.path.abspath(JSON.value)), exist_ok=True)
    tmp = JSON.value + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, JSON.value)
    print(f"\nwrote {JSON.value}")


if __name__ == "__main__":
    app.run(main)
