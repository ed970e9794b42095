"""Checkpoints of the earlier object layout (the neck as `pre_rpn_neck`, the R-CNN stage as
`roi_head` with `head` and `neck`) still load: tests/data/legacy_checkpoint_keys/ holds the keys
of checkpoints that the earlier code wrote for each synthetic experiment, and `legacy_view`
must reproduce them exactly, then carry their values into the current detector."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from lhrcnn.detector import build_detector, legacy_view, load_detector, uses_legacy_layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = os.path.join(ROOT, "tests/data/legacy_checkpoint_keys")
SYNTHETIC = ("light_head_rcnn.xception_star.synthetic", "thundernet.snet146.synthetic", "detnet59.fpn.synthetic",
             "double_head.r50_fpn.synthetic")


def _keys(prefix):
    return sorted(name for name, _ in tf.train.list_variables(prefix))


@pytest.mark.parametrize("experiment", SYNTHETIC)
def test_legacy_view_has_the_earlier_checkpoint_keys_and_loads_them(experiment, tmp_path):
    directory = os.path.join(ROOT, "experiments/lhrcnn", experiment)
    tf.keras.utils.set_random_seed(3)
    source = build_detector(directory, ops_backend="tf")
    with open(os.path.join(KEYS, f"{experiment}.json")) as f:
        earlier = json.load(f)
    legacy = tf.train.Checkpoint(model=legacy_view(source)).write(str(tmp_path / "legacy" / "ckpt"))
    assert _keys(legacy) == earlier
    assert uses_legacy_layout(legacy)
    current = tf.train.Checkpoint(model=source).write(str(tmp_path / "current" / "ckpt"))
    assert not uses_legacy_layout(current)
    assert len(_keys(current)) == len(earlier)
    # the earlier layout into a detector with other initial values: every variable carried over
    tf.keras.utils.set_random_seed(4)
    loaded = load_detector(directory, checkpoint=legacy, ops_backend="tf")
    assert len(loaded.variables) == len(source.variables)
    for a, b in zip(source.variables, loaded.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    image = tf.random.stateless_normal([1, 96, 128, 3], seed=[1, 2], stddev=40.0)
    info = tf.constant([[96, 128, 1.0, 96, 128]])
    want, got = source({"images": image, "image_info": info}), loaded({"images": image, "image_info": info})
    for key in want:
        np.testing.assert_array_equal(want[key].numpy(), got[key].numpy(), err_msg=key)
