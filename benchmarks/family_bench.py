"""CPU inference latency of the family's detectors at their papers' input sizes: batch 1,
median after warm-up, on all cores and on one thread (a fresh process with one intra-op and one
inter-op thread, the papers' single-threaded setting), next to the papers' figures. Each row also
gives the multiply-adds, the achieved GMAC/s against the machine's GEMM peak, the split between
the backbone and the rest (neck, RPN, proposals, R-CNN head, post-processing) and the graph's op
count, and the executed time by op type (a traced run of the frozen graph), which together say what
limits the model: arithmetic (latency near the GEMM floor: multiply-adds at the measured GEMM
peak), small memory-bound ops (depthwise convolutions, activations, concatenations, shuffles:
time far above the floor), or one slow op.

  python -m benchmarks.family_bench [--models thundernet_snet49,...] [--single KEY]
"""
import json
import os
import subprocess
import sys
import time


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXP = os.path.join(ROOT, "experiments", "lhrcnn")

# key -> (label, experiment, (height, width), paper images/s (single-threaded Xeon E5-2682 v4) or None,
#         paper note, target images/s on this machine or None)
MODELS = {
    "thundernet_snet49": ("ThunderNet SNet49", "thundernet.snet49.coco", (320, 320), 47.3,
                          "Xeon E5-2682 v4, 1 thread; Snapdragon 845: 24.1", 24.0),
    "thundernet_snet146": ("ThunderNet SNet146", "thundernet.snet146.coco", (320, 320), 32.3,
                           "Xeon E5-2682 v4, 1 thread; Snapdragon 845: 13.8", 14.0),
    "thundernet_snet535": ("ThunderNet SNet535", "thundernet.snet535.coco", (320, 320), 15.3,
                           "Xeon E5-2682 v4, 1 thread; Snapdragon 845: 5.8", None),
    "detnet59_fpn": ("DetNet-59 FPN", "detnet59.fpn.coco", (800, 1344), None, "GPU only in the paper", None),
    "double_head_r50_fpn": ("Double-Head-Ext R-50-FPN", "double_head.r50_fpn.coco", (800, 1344), None,
                            "GPU only in the paper", None),
}
COLUMNS = [("model", "model", "{}"), ("input", "input", "{}"), ("images_per_s", "img/s (all cores)", "{:.1f}"),
           ("images_per_s_1thread", "img/s (1 thread)", "{:.1f}"), ("paper", "paper img/s (1 thread)", "{}"),
           ("target", "target", "{}"), ("gmacs", "GMAC", "{:.2f}"), ("gmac_per_s", "GMAC/s", "{:.0f}"),
           ("backbone_pct", "backbone %", "{:.0f}"), ("ops", "graph ops", "{}"),
           ("latency_ms", "latency ms", "{:.1f}"), ("arith_floor_ms", "GEMM floor ms", "{:.1f}"),
           ("top_ops", "time by op type", "{}")]


def op_time_shares(detector, x, runs=5):
    """{executed op type: share of the executed ops' time} of one inference: the traced function
    frozen (variables to constants), run in a graph session with full tracing, node times summed
    by the kernel that ran (after Grappler's fusions, e.g. _FusedConv2D) over `runs` runs."""
    import collections

    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    fn = tf.function(lambda images, info: detector({"images": images, "image_info": info})["boxes"])
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function(x["images"], x["image_info"]))
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(frozen.graph.as_graph_def(), name="")
    feed = {frozen.inputs[0].name: x["images"].numpy(), frozen.inputs[1].name: x["image_info"].numpy()}
    outputs = [t.name for t in frozen.outputs]
    times = collections.Counter()
    with tf.compat.v1.Session(graph=graph) as session:
        for _ in range(2):
            session.run(outputs, feed)
        options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
        for _ in range(runs):
            metadata = tf.compat.v1.RunMetadata()
            session.run(outputs, feed, options=options, run_metadata=metadata)
            for device in metadata.step_stats.dev_stats:
                for node in device.node_stats:
                    # the executed kernel ("Relu = _FusedConv2D(...)": Grappler fuses a conv with
                    # its bias and ReLU into one node named after the ReLU)
                    label = node.timeline_label
                    kind = label.split(" = ", 1)[1].split("(", 1)[0].strip() if " = " in label else node.node_name
                    times[kind] += node.all_end_rel_micros
    total = max(1, sum(times.values()))
    return {kind: t / total for kind, t in times.most_common()}


def measure(key, repeats=20):
    """Latency (s) of the whole detector and of its backbone alone, in this process, plus the op
    count of the whole inference graph."""
    import tensorflow as tf

    from benchmarks.model_bench import _inputs
    from benchmarks.timing import interleaved_medians
    from lhrcnn.detector import build_detector
    _, experiment, (height, width), _, _, _ = MODELS[key]
    detector = build_detector(os.path.join(EXP, experiment))
    x = _inputs(height, width)
    full = tf.function(lambda x: detector(x))
    backbone = tf.function(lambda images: detector.backbone(images))
    times = interleaved_medians({
        "total": lambda: full(x)["boxes"].numpy(),
        "backbone": lambda: [v.numpy() for v in backbone(x["images"]).values()],
    }, warmup=3, repeats=repeats)
    ops = len(full.get_concrete_function(x).graph.get_operations())
    return {"latency_s": times["total"], "backbone_s": times["backbone"], "ops": ops,
            "op_shares": op_time_shares(detector, x, runs=2 if height * width > 500_000 else 5)}


def _single_thread(key, repeats):
    """measure() in a fresh process limited to one thread (threads are fixed at TF start-up)."""
    code = ("import json, sys, tensorflow as tf\n"
            "tf.config.threading.set_intra_op_parallelism_threads(1)\n"
            "tf.config.threading.set_inter_op_parallelism_threads(1)\n"
            "from benchmarks.family_bench import measure\n"
            f"print('RESULT', json.dumps(measure({key!r}, {repeats})))\n")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=1800)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"single-thread run of {key} failed: {out.stderr[-2000:]}")


def run(models=tuple(MODELS), repeats=20, gemm=None):
    from lhrcnn import flops
    from benchmarks.model_bench import gemm_gflops
    gemm = gemm or gemm_gflops()
    rows = []
    for key in models:
        if key not in MODELS:
            raise ValueError(f"unknown family model {key!r}; known: {', '.join(MODELS)}")
        label, experiment, (height, width), paper, paper_note, target = MODELS[key]
        heavy = height * width > 500_000
        reps = 3 if heavy else repeats
        t0 = time.time()
        here = measure(key, reps)
        one = _single_thread(key, reps)
        macs = flops.detector_complexity(os.path.join(EXP, experiment), height, width)["macs"]
        ips = 1.0 / here["latency_s"]
        rows.append(dict(
            model=label, experiment=experiment, input=f"{height}x{width}", latency_ms=1e3 * here["latency_s"],
            images_per_s=ips, latency_ms_1thread=1e3 * one["latency_s"], images_per_s_1thread=1.0 / one["latency_s"],
            paper=paper if paper is not None else "-", paper_note=paper_note,
            target=f">= {target:.0f} {'met' if ips >= target else 'NOT met'}" if target else "-",
            gmacs=macs / 1e9, gmac_per_s=macs / 1e9 / here["latency_s"],
            gemm_peak_gmac_per_s=gemm / 2, backbone_pct=100 * here["backbone_s"] / here["latency_s"],
            ops=here["ops"], arith_floor_ms=1e3 * macs / 1e9 / (gemm / 2), op_shares=here["op_shares"],
            top_ops=", ".join(f"{k} {100 * v:.0f}%" for k, v in list(here["op_shares"].items())[:4]),
            bench_s=time.time() - t0))
    return rows, {"gemm_gflops": gemm, "cpus": os.cpu_count()}


def main(argv):
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    from benchmarks.timing import format_table
    rows, extra = run(args.models.split(","), args.repeats)
    print(format_table(rows, COLUMNS))
    print(f"GEMM peak {extra['gemm_gflops'] / 2:.0f} GMAC/s on {extra['cpus']} cores")


if __name__ == "__main__":
    main(sys.argv[1:])
