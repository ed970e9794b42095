"""The Bazel build of the custom ops: `bazel build //ops:_lhrcnn_ops.so` works and its library runs.

Skipped when `bazel` is not on PATH. The built library is loaded in a subprocess, because the
ops' names are already registered in this process when other tests loaded lhrcnn/_lhrcnn_ops.so.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = "//ops:_lhrcnn_ops.so"
BUILD_TIMEOUT_S = 1800  # a cold build on two cores takes about a minute; leave room for a busy machine

pytestmark = pytest.mark.skipif(shutil.which("bazel") is None,
                                reason="bazel is not installed (Debian: apt-get install bazel-bootstrap)")

# Runs in a fresh interpreter: loads the library named by argv[1], runs two ops, prints json.
_PROBE = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    lib = tf.load_op_library(sys.argv[1])
    boxes = tf.constant([[0, 0, 10, 10],     # 0: kept
                         [1, 1, 11, 11],     # 1: IoU 81 / 119 = 0.68 with box 0: suppressed
                         [20, 20, 30, 30],   # 2: disjoint: kept
                         [0, 0, 10, 4],      # 3: IoU 40 / 100 = 0.4 with box 0: kept, visited first
                         [5, 5, 15, 15]],    # 4: score below the threshold
                        tf.float32)
    scores = tf.constant([0.9, 0.8, 0.7, 0.95, 0.05])
    indices, num_valid = lib.lhrcnn_nms(boxes, scores, tf.zeros([0], tf.int32), max_output_size=5,
                                        iou_threshold=0.5, score_threshold=0.1)

    group, k = 3, 2
    channels = k * group * group
    # Channel c holds the constant c + 1, so every bilinear sample inside the map reads c + 1.
    features = tf.constant(np.broadcast_to(np.arange(1, channels + 1, dtype=np.float32),
                                           (1, 8, 8, channels)))
    rois = tf.constant([[0, 4, 4, 12, 12], [0, 2, 2, 10, 8]], tf.float32)  # inside the map at 1/2
    pooled, argmax = lib.lhrcnn_ps_roi_align(features, rois, group_size=group, spatial_scale=0.5,
                                             sample_height=2, sample_width=2, pooling="max")
    print(json.dumps({
        "ops": sorted(name for name in dir(lib) if name.startswith("lhrcnn_") and "fallback" not in name),
        "nms_indices": indices.numpy().tolist(),
        "nms_num_valid": int(num_valid.numpy()),
        "ps_roi_align_shape": pooled.shape.as_list(),
        "ps_roi_align_argmax_shape": argmax.shape.as_list(),
        "ps_roi_align_argmax_range": [int(tf.reduce_min(argmax)), int(tf.reduce_max(argmax))],
        "ps_roi_align": pooled.numpy().tolist(),
    }))
""")


def _bazel(*args, timeout):
    env = dict(os.environ, PYTHON_BIN_PATH=sys.executable)  # build against this interpreter's TF
    proc = subprocess.run(["bazel", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "ERROR" in line or "error:" in line]
        pytest.fail(f"`bazel {' '.join(args)}` failed ({proc.returncode}); errors:\n" + "\n".join(errors[:40])
                    + f"\n--- end of its log:\n{proc.stderr[-4000:]}")
    return proc.stdout


@pytest.fixture(scope="module")
def bazel_library():
    _bazel("build", TARGET, timeout=BUILD_TIMEOUT_S)
    bazel_bin = _bazel("info", "bazel-bin", timeout=300).strip()
    path = os.path.join(bazel_bin, "ops", "_lhrcnn_ops.so")
    assert os.path.isfile(path), f"bazel built {TARGET} but {path} does not exist"
    return path


@pytest.fixture(scope="module")
def probe(bazel_library):
    proc = subprocess.run([sys.executable, "-c", _PROBE, bazel_library], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, f"loading {bazel_library} failed:\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_library_registers_all_ops(probe):
    assert probe["ops"] == [
        "lhrcnn_depthwise_filter_grad", "lhrcnn_nms", "lhrcnn_ps_roi_align", "lhrcnn_ps_roi_align_grad", "lhrcnn_ps_roi_pool",
        "lhrcnn_ps_roi_pool_grad", "lhrcnn_roi_align", "lhrcnn_roi_align_grad",
    ]


def test_nms_matches_hand_computed_answer(probe):
    # Visiting order by score: 3 (0.95) kept, 0 (0.9) kept (IoU 0.4 with 3), 1 (0.8) suppressed by 0,
    # 2 (0.7) kept, 4 (0.05) below score_threshold. Padded with -1 to max_output_size.
    assert probe["nms_indices"] == [3, 0, 2, -1, -1]
    assert probe["nms_num_valid"] == 3


def test_ps_roi_align_shape_and_values(probe):
    assert probe["ps_roi_align_shape"] == [2, 3, 3, 2]
    assert probe["ps_roi_align_argmax_shape"] == [2, 3, 3, 2]
    low, high = probe["ps_roi_align_argmax_range"]
    assert 0 <= low <= high < 2 * 2  # a sample index of the 2 x 2 samples per bin
    # Output (ph, pw, k) max-pools input channel c = (k * G + ph) * G + pw, which holds c + 1.
    g = 3
    expected = np.fromfunction(lambda ph, pw, k: (k * g + ph) * g + pw + 1, (g, g, 2))
    np.testing.assert_allclose(np.asarray(probe["ps_roi_align"]), np.stack([expected, expected]), rtol=1e-6)
