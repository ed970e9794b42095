"""Edge runtimes against TensorFlow on the same detector, the same input and the same machine: for
ThunderNet SNet49/146/535 at 320x320 and the Xception* Light-Head at its 700x1100, batch 1, the
stock-op SavedModel in TensorFlow, the LiteRT model (float32, float16 weights, full-integer int8)
and the ONNX model in ONNX Runtime, each on one thread and on all cores; model file size and peak
memory; the papers' figures beside them.

Every measurement runs in a fresh child process (thread counts are fixed at start-up, and peak
memory, VmHWM, is the child's own: the LiteRT and ONNX children never import TensorFlow).
The children run round-robin, two rounds, and each cell is the median over the rounds' medians,
so every runtime sees the same machine state. Weights are fresh (speed does not depend on them);
int8 is calibrated on synthetic images. The GEMM floor (multiply-adds at the measured float32
GEMM rate) is measured in the same run.

  python -m benchmarks.edge_bench [--models thundernet_snet146,...] [--repeats 20]
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# key -> (label, experiment, (height, width), paper 1-thread Xeon img/s, paper ARM img/s)
MODELS = {
    "thundernet_snet49": ("ThunderNet SNet49", "lhrcnn/thundernet.snet49.coco", (320, 320), 47.3, 24.1),
    "thundernet_snet146": ("ThunderNet SNet146", "lhrcnn/thundernet.snet146.coco", (320, 320), 32.3, 13.8),
    "thundernet_snet535": ("ThunderNet SNet535", "lhrcnn/thundernet.snet535.coco", (320, 320), 15.3, 5.8),
    "xception_star": ("Light-Head Xception*", "geonseoks/light_head_rcnn.xception_star.coco", (700, 1100), None,
                      None),
}
RUNTIMES = ("tf_savedmodel", "litert_float32", "litert_float16", "litert_int8", "onnxruntime")
COLUMNS = [("model", "model", "{}"), ("runtime", "runtime", "{}"), ("size_mb", "file MB", "{:.1f}"),
           ("ms_1thread", "ms (1 thread)", "{:.1f}"), ("ips_1thread", "img/s (1 thread)", "{:.1f}"),
           ("ms_all", "ms (all cores)", "{:.1f}"), ("ips_all", "img/s (all cores)", "{:.1f}"),
           ("peak_mb", "peak MB", "{:.0f}"), ("paper", "paper img/s (Xeon 1 thread / ARM)", "{}")]

_CHILD = r"""
import json, os, statistics, sys, time
import numpy as np
runtime, path, threads, repeats, height, width = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
image = np.random.default_rng(0).integers(0, 256, (1, height, width, 3)).astype(np.uint8)
if runtime == "tf_savedmodel":
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1 if threads == 1 else 0)
    loaded = tf.saved_model.load(path)
    fn = loaded.signatures["serving_default"]
    x = tf.constant(image)
    run = lambda: fn(images=x)["num_detections"].numpy()
else:
    sys.path.insert(0, sys.argv[7])
    from lhrcnn.export.edge_runtime import EdgeModel
    model = EdgeModel(path, num_threads=threads)
    run = lambda: model.run(image)
for _ in range(3):
    run()
times = []
for _ in range(repeats):
    t = time.perf_counter(); run(); times.append(time.perf_counter() - t)
# peak resident memory of this process since its exec (VmHWM; ru_maxrss would include the forked parent's)
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
print("RESULT", json.dumps({"seconds": statistics.median(times), "peak_mb": peak}))
"""


def _child(runtime, path, threads, repeats, size):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS=str(threads))
    if runtime == "tf_savedmodel":
        env["PYTHONPATH"] = ROOT
    proc = subprocess.run([sys.executable, "-c", _CHILD, runtime, path, str(threads), str(repeats), str(size[0]),
                           str(size[1]), ROOT], capture_output=True, text=True, env=env, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{runtime} on {path} failed: {proc.stderr[-2000:]}")


def _exports(key, workdir):
    """{runtime: model path} of the key's detector (fresh weights), and the MACs."""
    import tensorflow as tf

    from lhrcnn import flops
    from lhrcnn.config import load_config
    from lhrcnn.data.coco import load_coco
    from lhrcnn.data.synthetic import write_dataset
    from lhrcnn.detector import build_detector
    from lhrcnn.export import edge
    from lhrcnn.export.saved_model import export_saved_model
    _, experiment, size, _, _ = MODELS[key]
    experiment = os.path.join(ROOT, "experiments", experiment)
    overrides = dict(ops_backend="tf", eval_image_short_size=min(size), eval_image_max_size=max(size))
    detector = build_detector(experiment, **overrides)
    prefix = os.path.join(workdir, key, "ckpt", "ckpt-1")
    tf.train.Checkpoint(model=detector).write(prefix)
    config = load_config(experiment)
    category_ids = list(range(config.num_classes))
    calibration = load_coco(write_dataset(os.path.join(workdir, "calibration"), 8, 5, workers=1),
                            os.path.join(workdir, "calibration", "images"),
                            class_names=("background", "circle", "square", "triangle", "ring", "frame", "cross"))
    paths = {"tf_savedmodel": export_saved_model(detector, os.path.join(workdir, key, "savedmodel"),
                                                 category_ids=category_ids, verify=False)}
    for runtime, fmt, quantize in (("litert_float32", "tflite", "none"), ("litert_float16", "tflite", "float16"),
                                   ("litert_int8", "tflite", "int8"), ("onnxruntime", "onnx", "none")):
        folder = edge.export_edge(experiment, prefix, os.path.join(workdir, key, runtime), fmt=fmt, quantize=quantize,
                                  input_size=size, overrides=overrides, category_ids=category_ids,
                                  calibration_dataset=calibration, calibration_images=8, verify=False)
        paths[runtime] = os.path.join(folder, "model." + fmt)
    macs = flops.detector_complexity(experiment, *size)["macs"]
    return paths, macs


def _size_mb(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 1e6
    return os.path.getsize(path) / 1e6


def run(models=tuple(MODELS), repeats=20, rounds=2, workdir=None):
    from benchmarks.model_bench import gemm_gflops
    gemm = gemm_gflops()
    cores = os.cpu_count()
    workdir = workdir or tempfile.mkdtemp(prefix="lhrcnn_edge_bench_")
    rows = []
    for key in models:
        if key not in MODELS:
            raise ValueError(f"unknown edge model {key!r}; known: {', '.join(MODELS)}")
        label, _, size, paper_xeon, paper_arm = MODELS[key]
        t0 = time.time()
        paths, macs = _exports(key, workdir)
        export_s = time.time() - t0
        samples = {(r, t): [] for r in RUNTIMES for t in (1, cores)}
        peaks = {r: 0.0 for r in RUNTIMES}
        for _ in range(rounds):
            for threads in (1, cores):
                for runtime in RUNTIMES:
                    result = _child(runtime, paths[runtime], threads, repeats, size)
                    samples[(runtime, threads)].append(result["seconds"])
                    peaks[runtime] = max(peaks[runtime], result["peak_mb"])
        paper = (f"{paper_xeon} / {paper_arm}" if paper_xeon else "-")
        for runtime in RUNTIMES:
            one = statistics.median(samples[(runtime, 1)])
            every = statistics.median(samples[(runtime, cores)])
            rows.append(dict(model=label, input=f"{size[0]}x{size[1]}", runtime=runtime,
                             size_mb=_size_mb(paths[runtime]), ms_1thread=1e3 * one, ips_1thread=1 / one,
                             ms_all=1e3 * every, ips_all=1 / every, peak_mb=peaks[runtime], paper=paper,
                             gmacs=macs / 1e9, gemm_floor_ms=1e3 * 2 * macs / (gemm * 1e9), export_s=export_s))
    return rows, {"gemm_gflops": gemm, "cpus": cores, "rounds": rounds, "repeats": repeats}


def main(argv):
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from benchmarks.timing import format_table
    rows, extra = run(args.models.split(","), args.repeats)
    print(format_table(rows, COLUMNS))
    print(f"GEMM {extra['gemm_gflops']:.0f} GFLOP/s on {extra['cpus']} cores; floors: "
          + ", ".join(f"{r['model']} {r['gemm_floor_ms']:.1f} ms" for r in rows if r["runtime"] == "tf_savedmodel"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, **extra}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
