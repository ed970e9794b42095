"""Checkpoints of the earlier object layout (the neck as `pre_rpn_neck`, the R-CNN stage as
`roi_head` with `head` and `neck`) still load: tests/support/legacy_checkpoint_keys/ holds the keys
of checkpoints that the earlier code wrote for each synthetic experiment, and `legacy_view`
must reproduce them exactly, then carry their values into the current detector."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from lhrcnn.detector import build_detector, legacy_view, load_detector, uses_legacy_layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = os.path.join(ROOT, "tests/support/legacy_checkpoint_keys")
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


def test_training_resumes_from_a_checkpoint_of_the_earlier_layout(tmp_path):
    """A run's model_dump/ written in the earlier layout: the model, the optimizer's step and its
    slots come back (TrainingCheckpoints.restore_latest), and so does --init_checkpoint."""
    from lhrcnn.keras import keras
    from lhrcnn.train.checkpoints import TrainingCheckpoints, initialize_from
    directory = os.path.join(ROOT, "experiments/lhrcnn/thundernet.snet146.synthetic")
    tf.keras.utils.set_random_seed(5)
    source = build_detector(directory, ops_backend="tf")
    optimizer = keras.optimizers.Adam(1e-3)
    variables = source.trainable_variables
    for _ in range(2):
        optimizer.apply_gradients(zip([tf.ones_like(v) for v in variables], variables))
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=legacy_view(source), optimizer=optimizer),
                                         str(tmp_path / "model_dump"), max_to_keep=1)
    manager.save(checkpoint_number=2)

    tf.keras.utils.set_random_seed(6)
    target = build_detector(directory, ops_backend="tf")
    resumed_optimizer = keras.optimizers.Adam(1e-3)
    checkpoints = TrainingCheckpoints(str(tmp_path / "model_dump"), model=target, optimizer=resumed_optimizer)
    assert checkpoints.restore_latest() is not None
    assert int(resumed_optimizer.iterations.numpy()) == 2
    saved = [v.numpy() for v in source.variables]
    for a, b in zip(saved, target.variables):
        np.testing.assert_array_equal(a, b.numpy(), err_msg=b.name)
    # the Adam moments follow the restored model variables: one more equal step gives equal weights
    grads = [tf.ones_like(v) for v in variables]
    optimizer.apply_gradients(zip(grads, variables))
    resumed_optimizer.apply_gradients(zip(grads, target.trainable_variables))
    for a, b in zip(source.trainable_variables, target.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.name)

    tf.keras.utils.set_random_seed(7)
    initialised = build_detector(directory, ops_backend="tf")
    initialize_from(initialised, str(tmp_path / "model_dump"))
    for a, b in zip(saved, initialised.variables):
        np.testing.assert_array_equal(a, b.numpy(), err_msg=b.name)
