"""Determinism of the compiled ops on the CPU: forward and backward give the same bits run after
run, under tf.config.experimental.enable_op_determinism() (which the GPU gradients refuse, since
they add with atomicAdd) and with 1 or 2 intra-op threads (each thread owns whole bin planes of
the gradient: no atomics, no order that depends on the scheduling)."""
import hashlib
import os
import subprocess
import sys

import pytest

from lhrcnn import ops

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CHILD = r"""
import hashlib, sys
import numpy as np
import tensorflow as tf
threads = int(sys.argv[1])
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
tf.config.experimental.enable_op_determinism()
from lhrcnn import ops
rng = np.random.default_rng(0)
features = tf.constant(rng.normal(size=(2, 40, 52, 490)).astype(np.float32))
rois = rng.uniform(0, 600, (700, 5)).astype(np.float32)
rois[:, 0] = rng.integers(0, 2, 700)
rois[:, 3:] = rois[:, 1:3] + rng.uniform(8, 300, (700, 2))
rois = tf.constant(rois)
digest = hashlib.sha256()
calls = {
    "ps_roi_align": lambda f: ops.ps_roi_align(f, rois, 7, 1 / 16, backend="custom"),
    "ps_roi_pool": lambda f: ops.ps_roi_pool(f, rois, 7, 1 / 16, backend="custom"),
    "roi_align": lambda f: ops.roi_align(f[..., :64], rois, 7, 1 / 16, backend="custom"),
}
for _ in range(3):  # the depthwise filter gradient: one shard per 16-channel block, each sum in a fixed order
    dy = tf.constant(rng.normal(size=(2, 20, 26, 490)).astype(np.float32))
    digest.update(ops.depthwise_filter_grad(features, dy, 5, 2, "SAME", backend="custom").numpy().tobytes())
for name, fn in calls.items():
    for _ in range(3):
        with tf.GradientTape() as tape:
            tape.watch(features)
            out = fn(features)
            loss = tf.reduce_sum(out * tf.constant(rng.normal(size=out.shape).astype(np.float32)))
        grad = tape.gradient(loss, features)
        digest.update(out.numpy().tobytes() + grad.numpy().tobytes())
boxes = rng.uniform(0, 500, (3000, 4)).astype(np.float32)
boxes[:, 2:] = boxes[:, :2] + rng.uniform(4, 100, (3000, 2))
scores = rng.random(3000).astype(np.float32)
for _ in range(3):
    out = ops.nms(boxes, scores, 500, 0.5, backend="custom")
    for part in (out if isinstance(out, (tuple, list)) else [out]):
        digest.update(np.asarray(part).tobytes())
print("DIGEST", digest.hexdigest())
"""


@pytest.mark.skipif(not ops.custom_ops_available(), reason="needs the compiled ops")
def test_cpu_ops_are_deterministic_across_runs_and_thread_counts():
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    digests = []
    for threads in (1, 2, 2):
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(threads)], capture_output=True, text=True,
                              env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        digests.append(next(l for l in proc.stdout.splitlines() if l.startswith("DIGEST")))
    assert len(set(digests)) == 1, digests
