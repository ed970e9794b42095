"""Run by tests/train/test_distribute.py in a fresh process (logical CPU devices must be configured
before TensorFlow starts): one training step of the synthetic Light-Head experiment (OHEM and
in-graph anchor / RoI targets, momentum SGD, an active global-norm clip, weight decay, x3
multipliers) on ONE device with a batch of 2 images, and on TWO logical CPU devices under
MirroredStrategy with 1 image per replica, from the same initial weights (per-image loss
normalisation; OHEM keeps 8 RoIs per image in both). Prints one JSON line: the largest relative
difference of the updated trainable weights and of the BN statistics.

  python tests/support/distributed_equivalence.py frozen_bn|sync_bn|unsynced_bn|convbn_stack
"""
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from lhrcnn.train.distribute import set_cpu_replicas  # noqa: E402

set_cpu_replicas(2)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from lhrcnn.train.trainer import Trainer  # noqa: E402
from batches import tiny_batch as _tiny_batch  # noqa: E402

SYNTHETIC = os.path.join(REPO, "experiments/lhrcnn/light_head_rcnn.xception_star.synthetic")
BASE = dict(rpn_batch_size=10 ** 6, rpn_fg_fraction=1.0, roi_batch_size_per_image=-1,  # no random sampling
            train_rpn_pre_nms_top_n=300, train_rpn_post_nms_top_n=32, warmup_iters=10, nr_image_per_epoch=20,
            lr_stages=((2, 1.0), (3, 0.1)), gradient_multipliers={"conv_new": 3.0}, gradient_clip_norm=1.0,
            optimizer="momentum", precise_bn_batches=0, weight_decay=1e-4, loss_normalization="image")
# The backbone's BNs are frozen in the full-model modes: with batch statistics, this from-scratch
# Xception* is numerically chaotic in float32 (a 1e-6 relative change of the input moves some
# gradients by ~10%, on one device, fused or not), so no two summation orders agree to 1e-5.
# The synchronised ConvBN is checked on a well-conditioned stack instead ("convbn_stack").
MODES = {
    "frozen_bn": dict(backbone_options={"freeze_bn": True}, thin_map_norm=None),
    "sync_bn": dict(backbone_options={"freeze_bn": True}, thin_map_norm="batch", sync_batch_norm=True),
    "unsynced_bn": dict(backbone_options={"freeze_bn": True}, thin_map_norm="batch", sync_batch_norm=False),
}


def convbn_stack():
    """Three synchronised ConvBN layers (stride 2, ReLU) on 2 replicas x 1 image against the
    same layers (fused BN) on one device with both images: gradients and moving statistics."""
    from lhrcnn.backbones.layers import ConvBN
    from lhrcnn.keras import keras
    from lhrcnn.train.distribute import enable_sync_batch_norm
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(1.0, 3.0, size=(2, 32, 32, 4)).astype(np.float32))
    w = tf.constant(rng.normal(size=(2, 16, 16, 8)).astype(np.float32))

    def build():
        inputs = keras.Input((None, None, 4))
        h = inputs
        for k in range(3):
            h = ConvBN(8, 3, strides=2 if k == 0 else 1, padding="slim_same", bn_frozen=False, relu=k < 2,
                       bn_momentum=0.5, name=f"c{k}")(h)
        model = keras.Model(inputs, h)
        enable_sync_batch_norm(model)
        return model

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    one = build()
    with strategy.scope():
        two = build()
    for a, b in zip(one.weights, two.weights):
        b.assign(a.numpy())
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(one(x, training=True) * w)
    single = tape.gradient(loss, one.trainable_variables)

    def replica():
        i = tf.distribute.get_replica_context().replica_id_in_sync_group
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(two(x[i:i + 1], training=True) * w[i:i + 1]) 
        return tape.gradient(loss, two.trainable_variables)
    mirrored = [strategy.reduce("SUM", g, axis=None) for g in tf.function(lambda: strategy.run(replica))()]
    worst = {"trainable": max(float(np.max(np.abs(a - b)) / np.max(np.abs(a))) for a, b in zip(single, mirrored)),
             "statistics": max(float(np.max(np.abs(a.numpy() - b.numpy())) / np.max(np.abs(a.numpy())))
                               for a, b in zip(one.non_trainable_weights, two.non_trainable_weights))}
    moved = max(float(np.max(np.abs(v.numpy() - init))) for v, init in
                zip(one.non_trainable_weights, [np.zeros(8), np.ones(8)] * 3))
    print(json.dumps({"mode": "convbn_stack", "max_rel_diff": worst, "max_rel_update": moved,
                      "variables": len(one.weights)}), flush=True)


def run(strategy, per_replica, basic_lr, initial, batch, overrides):
    def fn(ctx, per_replica_batch, seed):
        assert per_replica_batch == per_replica, (per_replica_batch, per_replica)
        return tf.data.Dataset.from_tensor_slices(batch).batch(per_replica).repeat()

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(SYNTHETIC, output_dir=tmp, strategy=strategy, train_dataset=fn, total_steps=1,
                          train_batch_per_gpu=per_replica, basic_lr=basic_lr,
                          **{"ohem_top_k": 8 * per_replica, **overrides})
        variables = trainer.detector.variables
        if initial is None:
            initial = [v.numpy() for v in variables]
        else:
            for v, value in zip(variables, initial):
                v.assign(value)
        trainer.train()
        trainable = {id(v) for v in trainer.detector.trainable_variables}
        return initial, [(v.name, v.numpy(), id(v) in trainable) for v in variables], trainer


def main():
    mode = sys.argv[1]
    if mode == "convbn_stack":
        return convbn_stack()
    overrides = dict(BASE, **MODES[mode])
    batch = {k: v.numpy() for k, v in _tiny_batch(3, 128).items()}
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    initial, single, _ = run(one, 2, 0.004, None, batch, overrides)
    # lr = basic_lr x replicas: 2 replicas with basic_lr / 2 use the single device's rate
    _, mirrored, trainer = run(two, 1, 0.002, initial, batch, overrides)
    assert trainer.replicas == 2
    worst = {"trainable": 0.0, "statistics": 0.0}
    moved = 0.0
    for (name, a, trainable), (name2, b, _), w0 in zip(single, mirrored, initial):
        assert a.shape == b.shape, (name, name2)
        scale = max(float(np.max(np.abs(a))), 1e-6)
        key = "trainable" if trainable else "statistics"
        worst[key] = max(worst[key], float(np.max(np.abs(a - b))) / scale)
        if trainable:
            moved = max(moved, float(np.max(np.abs(a - w0))) / scale)
    print(json.dumps({"mode": mode, "max_rel_diff": worst, "max_rel_update": moved,
                      "variables": len(single)}), flush=True)


if __name__ == "__main__":
    main()
