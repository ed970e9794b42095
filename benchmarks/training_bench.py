"""The main job's training step against its floor, on this machine: ThunderNet SNet146 on the
synthetic set (the main job's experiment), batches from its own tf.data pipeline held in memory
(the step alone, as the main job sees it once the decoded images are cached).

For each variant (config overrides and thread settings), the seconds per step, images/s and the
ratio to the floor: the step's multiply-adds (the training-mode forward pass counted from its
graph, x3 for the backward pass's input and weight gradients) at the float32 GEMM rate measured
in the same run. Variants run in one child process each, round-robin over two rounds (threads
are fixed at process start-up), and each cell is the median of the rounds' medians. The profile
(TF profiler, per-op self time over a number of steps) gives the share of the top ops.

  python -m benchmarks.training_bench [--variants default,...] [--steps 20] [--profile-steps 10]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = os.path.join(ROOT, "experiments", "lhrcnn", "thundernet.snet146.synthetic")

# name -> (config overrides, environment)
VARIANTS = {
    "default": ({}, {}),
    "inter_op 1": ({}, {"LHRCNN_INTER_OP_THREADS": "1"}),
    "compiled depthwise filter grad": ({"depthwise_filter_grad": "custom"}, {}),
    "jit_compile backbone": ({"jit_compile": True}, {}),
    "mixed_bfloat16": ({"mixed_precision": "mixed_bfloat16"}, {}),
    # images per step (OHEM's per-replica budget scaled with them): does a larger batch amortise
    # per-step overhead?
    "batch 4": ({"train_batch_per_gpu": 4, "ohem_top_k": 512}, {}),
    "batch 8": ({"train_batch_per_gpu": 8, "ohem_top_k": 1024}, {}),
    "snet49 backbone": ({"backbone": "snet49"}, {}),
}

_CHILD = r"""
import json, os, sys, time
import numpy as np
import tensorflow as tf
inter = os.environ.get("LHRCNN_INTER_OP_THREADS")
if inter:
    tf.config.threading.set_inter_op_parallelism_threads(int(inter))
from lhrcnn.train.trainer import Trainer
overrides, steps, batches, profile_dir = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with __import__("tempfile").TemporaryDirectory() as tmp:
    trainer = Trainer(sys.argv[5], output_dir=tmp, **overrides)
    source = iter(trainer.distributed_dataset(seed=0))
    held = [next(source) for _ in range(batches)]  # the step alone: batches already decoded
    del source
    k = [0]
    class Cycle:
        def __next__(self):
            k[0] += 1
            return held[k[0] % len(held)]
    it = Cycle()
    for _ in range(3):
        float(trainer._train_step(it)["total"])
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        float(trainer._train_step(it)["total"])
        times.append(time.perf_counter() - t)
    result = {"seconds": sorted(times)[len(times) // 2], "images": trainer.global_batch,
              "shape": [int(d) for d in held[0]["images"].shape]}
    if profile_dir != "-":
        tf.profiler.experimental.start(profile_dir)
        for _ in range(10):
            float(trainer._train_step(it)["total"])
        tf.profiler.experimental.stop()
print("RESULT " + json.dumps(result))
"""


def _training_macs(shape):
    """Multiply-adds of one training step on a batch of `shape`: the training-mode forward pass
    (losses included) counted from its graph, x3 (forward, input gradients, weight gradients)."""
    import numpy as np
    import tensorflow as tf

    from lhrcnn.detector import build_detector
    from lhrcnn.flops import count_macs
    detector = build_detector(EXPERIMENT)
    n, h, w, _ = shape
    rng = np.random.default_rng(0)
    boxes = np.zeros([n, detector.config.max_boxes_of_image, 4], np.float32)
    classes = np.zeros([n, detector.config.max_boxes_of_image], np.int32)
    for i in range(n):
        xy = rng.uniform(0, min(h, w) / 2, (8, 2))
        boxes[i, :8] = np.concatenate([xy, xy + rng.uniform(16, min(h, w) / 2, (8, 2))], 1)
        classes[i, :8] = rng.integers(1, detector.config.num_classes, 8)
    info = tf.constant([[h, w, 1.0, h, w]] * n, tf.float32)
    macs, _, unknown = count_macs(
        lambda images: detector.compute_losses({"images": images, "image_info": info,
                                                "gt_boxes": tf.constant(boxes), "gt_classes": tf.constant(classes)},
                                               training=True)["total"],
        tf.TensorSpec(shape, tf.float32))
    return 3 * macs, unknown


def _top_ops(profile_dir, top=10):
    """[(op type, share of the host ops' self time)] of the profile, largest first (the profiler's
    framework_op_stats table, a DataTable: columns by id, rows of cells)."""
    import glob

    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin
    paths = glob.glob(os.path.join(profile_dir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        return []
    data, ok = plugin.xspace_to_tools_data(paths, "framework_op_stats", {})
    if not ok:
        return []
    table = json.loads(data)[0]
    columns = [c["id"] for c in table["cols"]]
    by_type, total = {}, 0.0
    for row in table["rows"]:
        cells = dict(zip(columns, (c.get("v") if c else None for c in row["c"])))
        if cells.get("host_or_device") not in (None, "Host") or cells.get("type") == "IDLE":
            continue
        self_time = float(cells.get("total_self_time") or 0.0)
        by_type[cells["type"]] = by_type.get(cells["type"], 0.0) + self_time
        total += self_time
    ranked = sorted(by_type.items(), key=lambda kv: -kv[1])[:top]
    return [(name, t / total) for name, t in ranked]


def run(variants=tuple(VARIANTS), steps=20, batches=16, rounds=2, profile=True):
    from benchmarks.model_bench import gemm_gflops
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    results = {name: [] for name in variants}
    profiles = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name in variants:
                overrides, extra_env = VARIANTS[name]
                profile_dir = os.path.join(tmp, name.replace(" ", "_")) if profile and r == 0 else "-"
                proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(overrides), str(steps), str(batches),
                                       profile_dir, EXPERIMENT], capture_output=True, text=True,
                                      env={**env, **extra_env}, cwd=ROOT, timeout=1800)
                lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
                if proc.returncode != 0 or not lines:
                    results[name].append({"error": proc.stderr[-1500:]})
                    continue
                results[name].append(json.loads(lines[-1][len("RESULT "):]))
                if profile_dir != "-":
                    profiles[name] = _top_ops(profile_dir)
                print(f"  round {r + 1}, {name}: {results[name][-1]['seconds']:.3f} s/step", flush=True)
    gemm = gemm_gflops()
    shape = next(r["shape"] for rs in results.values() for r in rs if "shape" in r)
    macs, unknown = _training_macs(shape)
    floor = 2 * macs / (gemm * 1e9)
    rows = []
    for name, rs in results.items():
        good = [r for r in rs if "seconds" in r]
        if not good:
            rows.append({"variant": name, "error": rs[-1].get("error", "")[-300:]})
            continue
        seconds = statistics.median(r["seconds"] for r in good)
        rows.append({"variant": name, "seconds_per_step": seconds, "images_per_s": good[0]["images"] / seconds,
                     "floor_seconds": floor, "x_floor": seconds / floor, "top_ops": profiles.get(name, [])})
    return rows, {"gemm_gflops": gemm, "training_gmacs_per_step": macs / 1e9, "batch_shape": shape,
                  "unknown_mac_ops": len(unknown)}


def print_report(rows, extra):
    """The table of run()'s rows, each variant's top ops under it."""
    print(f"\n== training (the main job's step; GEMM {extra['gemm_gflops']:.0f} GFLOP/s; "
          f"{extra['training_gmacs_per_step']:.2f} GMACs per step on a batch {extra['batch_shape']}) ==")
    print(f"{'variant':<24} {'s/step':>8} {'img/s':>7} {'floor s':>8} {'x floor':>8}")
    for row in rows:
        if "error" in row:
            print(f"{row['variant']:<24} error: {row['error'][-200:]}")
            continue
        print(f"{row['variant']:<24} {row['seconds_per_step']:8.3f} {row['images_per_s']:7.2f} "
              f"{row['floor_seconds']:8.4f} {row['x_floor']:8.1f}")
        for op, share in row["top_ops"]:
            print(f"    {share * 100:5.1f}%  {op}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--json", default=os.path.join("output", "training_bench.json"))
    args = parser.parse_args()
    rows, extra = run(args.variants.split(","), steps=args.steps, rounds=args.rounds, profile=not args.no_profile)
    print_report(rows, extra)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json + ".tmp", "w") as f:
        json.dump({"rows": rows, **extra}, f, indent=1)
    os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
