"""The ops fuzz: `python tests/support/ops_fuzz.py SEED COUNT` runs COUNT seeded random calls of
the four ops (oversized integers, subnormal / zero / infinite scales, huge, NaN or infinite RoIs,
bad batch indices, NMS with and without classes) on both backends, eager and under tf.function,
and prints one JSON line before ("start") and after ("done": the outcome per backend and mode,
whether they agree, whether accepted values match) each call. It runs in a child process of
its caller, so a crash is seen as the child's death in the case last started."""
import json, math, sys
import numpy as np, tensorflow as tf
from lhrcnn import ops
seed, count = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(seed)
INTS = [0, 1, 2, 3, 7, 64, 65, 257, 1000, 46341, 65536, 2**31, 2**40, -1]
FLOATS = [1.0, 0.25, 1 / 16, 0.0, -1.0, 1e-40, 1e-300, 1e300, math.inf, math.nan]

def case():
    op = rng.choice(["ps_roi_align", "ps_roi_pool", "roi_align", "nms"])
    if op == "nms":
        n = int(rng.integers(0, 6))
        boxes = rng.normal(0, 10, (n, 4)).astype(np.float32)
        if rng.random() < 0.2 and n:
            boxes[0, 0] = rng.choice([np.nan, np.inf, 3e38])
        return op, dict(boxes=boxes, scores=rng.random(n).astype(np.float32),
                        max_output_size=int(rng.choice(INTS)), iou_threshold=float(rng.choice([0.5, 0.0, 1.0, 2.0])),
                        class_ids=rng.integers(0, 2, n).astype(np.int32) if rng.random() < 0.5 else None)
    g = int(rng.choice(INTS)) if rng.random() < 0.5 else int(rng.integers(1, 4))
    channels = int(rng.choice([0, 1, 4, 9, 18])) if op != "roi_align" else int(rng.integers(0, 3))
    shape = [1, int(rng.integers(1, 6)), int(rng.integers(1, 6)), channels]
    rois = rng.normal(2, 4, (int(rng.integers(0, 4)), 5)).astype(np.float32)
    rois[:, 0] = 0
    if rng.random() < 0.3 and len(rois):
        rois[0, 1:] = rng.choice([3e38, -3e38, 1e20, np.nan, np.inf], 4)
    if rng.random() < 0.1 and len(rois):
        rois[0, 0] = rng.choice([1.0, 0.5, -1.0])
    args = dict(features=rng.normal(size=shape).astype(np.float32), rois=rois,
                scale=float(rng.choice(FLOATS)) if rng.random() < 0.4 else 0.5)
    if op == "roi_align":
        args.update(output=g, sampling=int(rng.choice(INTS)) if rng.random() < 0.4 else 2)
    elif op == "ps_roi_align":
        args.update(group=g, sampling=int(rng.choice(INTS)) if rng.random() < 0.4 else 2)
    else:
        args.update(group=g)
    return op, args

def call(op, a, backend):
    if op == "nms":
        return ops.nms(a["boxes"], a["scores"], a["max_output_size"], a["iou_threshold"], class_ids=a["class_ids"],
                       backend=backend)
    if op == "roi_align":
        return ops.roi_align(a["features"], a["rois"], a["output"], a["scale"], sampling_ratio=a["sampling"], backend=backend)
    if op == "ps_roi_align":
        return ops.ps_roi_align(a["features"], a["rois"], a["group"], a["scale"], sampling_ratio=a["sampling"], backend=backend)
    return ops.ps_roi_pool(a["features"], a["rois"], a["group"], a["scale"], backend=backend)

def outcome(fn):
    try:
        out = fn()
        values = [np.asarray(v) for v in (out if isinstance(out, (tuple, list)) else [out])]
        return "ok", values
    except (ValueError, tf.errors.InvalidArgumentError) as e:
        return "error", str(e).splitlines()[0][:200]

for i in range(count):
    op, a = case()
    print(json.dumps({"start": i, "op": str(op)}), flush=True)
    results = {}
    for backend in ("custom", "tf"):
        results[(backend, "eager")] = outcome(lambda: call(op, a, backend))
        results[(backend, "graph")] = outcome(lambda: tf.function(lambda: call(op, a, backend))())
    kinds = {k: v[0] for k, v in results.items()}
    agree = len(set(kinds.values())) == 1
    same = True
    if agree and kinds[("custom", "eager")] == "ok":
        ref = results[("custom", "eager")][1]
        for key, (_, values) in results.items():
            for x, y in zip(ref, values):
                if x.shape != y.shape or not np.allclose(x, y, atol=1e-4, rtol=1e-4, equal_nan=True):
                    same = False
    print(json.dumps({"done": i, "op": str(op), "kinds": {f"{k[0]}/{k[1]}": v for k, v in kinds.items()},
                      "agree": agree, "same": same,
                      "error": next((v[1] for v in results.values() if v[0] == "error"), None)}), flush=True)
