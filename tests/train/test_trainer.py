"""The training loop: LR schedule values, the weight-decay and gradient-multiplier scope, one
step's update against a hand-computed SGD step, and resuming from a checkpoint."""
import os

import numpy as np
import pytest
import tensorflow as tf

from lhrcnn.train.schedules import WarmupMultiStageLR
from batches import tiny_batch as _tiny_batch  # noqa: E402  (tests/ is on sys.path)
from lhrcnn.train.trainer import Trainer, gradient_multiplier, is_decayed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYNTHETIC = os.path.join(ROOT, "experiments/lhrcnn/light_head_rcnn.xception_star.synthetic")
# Deterministic losses: no random anchor subsampling, keep-all RoI targets, a small graph.
DETERMINISTIC = dict(rpn_batch_size=10 ** 6, rpn_fg_fraction=1.0, roi_batch_size_per_image=-1,
                     train_rpn_pre_nms_top_n=300, train_rpn_post_nms_top_n=32, ohem_top_k=16,
                     train_batch_per_gpu=2, warmup_iters=10, nr_image_per_epoch=20, lr_stages=((2, 1.0), (3, 0.1)),
                     # the mechanisms under test, whatever the experiment sets
                     gradient_multipliers={"conv_new": 3.0}, gradient_clip_norm=None, optimizer="momentum",
                     precise_bn_batches=0)


def test_schedule_values_at_the_boundaries():
    s = WarmupMultiStageLR(0.01, iters_per_epoch=100, warmup_iters=500, warmup_factor=1 / 3,
                           stages=((19, 1.0), (25, 0.1), (30, 0.01)))
    expect = {0: 0.01 / 3, 250: 0.01 * (1 / 3 + 2 / 3 * 0.5), 499: 0.01 * (1 / 3 + 2 / 3 * 499 / 500),
              500: 0.01, 500 + 1899: 0.01, 500 + 1900: 0.001, 500 + 2499: 0.001, 500 + 2500: 1e-4,
              500 + 2999: 1e-4, 500 + 5000: 1e-4}
    for step, lr in expect.items():
        assert float(s(step)) == pytest.approx(lr, rel=1e-6), step
    assert s.total_steps == 3500
    with pytest.raises(ValueError):
        WarmupMultiStageLR(0.01, 100, stages=((5, 1.0), (3, 0.1)))


def _batch_fn(seed=0, size=128):
    batch = {k: v.numpy() for k, v in _tiny_batch(seed, size).items()}

    def fn(ctx, per_replica, seed):
        assert per_replica == 2
        return tf.data.Dataset.from_tensors(batch).repeat()
    return fn, batch


def test_decay_and_multiplier_scope():
    trainer = Trainer(SYNTHETIC, output_dir="/tmp/unused", train_dataset=_batch_fn()[0], **DETERMINISTIC)
    names = {v.name: (d, m) for v, d, m in zip(trainer.variables, trainer.decay, trainer.multipliers)}
    for name, (decay, mult) in names.items():
        leaf = name.split(":")[0].rsplit("/", 1)[-1]
        assert (decay > 0) == leaf.endswith("kernel"), name
        assert mult == (3.0 if "conv_new" in name else 1.0), name
    assert any("conv_new_1_conv15_w_pre" in n and "kernel" in n for n in names)
    assert not any("moving" in n for n in names)
    assert is_decayed(tf.Variable(1.0, name="a/ps_fc_1/kernel")) and not is_decayed(tf.Variable(1.0, name="a/bias"))
    assert gradient_multiplier(tf.Variable(1.0, name="conv_new_1/bias"), {"conv_new": 3.0}) == 3.0


def test_the_config_seed_fixes_the_initial_weights(tmp_path):
    """The same seed builds the same weights, whatever random draws came before; another seed
    (or None) builds other weights."""
    def weights(seed):
        np.random.uniform(size=7), tf.random.uniform([3])  # unrelated draws in between
        trainer = Trainer(SYNTHETIC, output_dir="/tmp/unused", train_dataset=_batch_fn()[0], seed=seed,
                          **DETERMINISTIC)
        return [(v.name, v.numpy()) for v in trainer.detector.trainable_variables]  # names differ by suffixes
    first, again, other = weights(5), weights(5), weights(6)
    assert len(first) == len(again) == len(other) > 100
    for (name, value), (_, same), (_, different) in zip(first, again, other):
        assert same.shape == different.shape == value.shape, name
        np.testing.assert_array_equal(same, value, err_msg=name)
        if np.ptp(value) > 0:  # not a constant (zero/one) initialiser
            assert not np.array_equal(different, value), name
    assert sum(np.ptp(value) > 0 for _, value in first) > 50
    # seed None: fresh weights every time, and a dataset function gets no seed
    seeds = []
    fn, _ = _batch_fn()
    trainer = Trainer(SYNTHETIC, output_dir=str(tmp_path), seed=None, total_steps=1,
                      train_dataset=lambda ctx, n, seed: seeds.append(seed) or fn(ctx, n, seed), **DETERMINISTIC)
    unseeded = [v.numpy() for v in trainer.detector.trainable_variables]
    assert trainer.train()["steps"] == 1 and seeds == [None]
    assert not any(np.array_equal(u, value) for u, (_, value) in zip(unseeded, first) if np.ptp(value) > 0)


def test_one_step_matches_a_hand_computed_sgd_update(tmp_path):
    fn, batch = _batch_fn()
    trainer = Trainer(SYNTHETIC, output_dir=str(tmp_path), train_dataset=fn, total_steps=1, **DETERMINISTIC)
    c = trainer.config
    before = [v.numpy() for v in trainer.variables]
    with tf.GradientTape() as tape:
        total = trainer.detector.compute_losses({k: tf.constant(v) for k, v in batch.items()})["total"]
    grads = tape.gradient(total, trainer.variables)
    trainer.train()
    lr = c.basic_lr * c.warmup_factor  # step 0 of the warm-up, one replica
    checked = 0
    for v, g, w0, decay, mult in zip(trainer.variables, grads, before, trainer.decay, trainer.multipliers):
        if g is None:
            continue
        want = w0 - lr * mult * (g.numpy() + decay * w0)  # first momentum step: velocity = -lr * grad
        np.testing.assert_allclose(v.numpy(), want, rtol=1e-4, atol=1e-6, err_msg=v.name)
        checked += 1
    assert checked == len([g for g in grads if g is not None]) > 100


def test_one_step_matches_a_hand_computed_adam_update(tmp_path):
    fn, batch = _batch_fn()
    options = dict(DETERMINISTIC, optimizer="adam", basic_lr=1e-3, momentum=0.9)
    trainer = Trainer(SYNTHETIC, output_dir=str(tmp_path), train_dataset=fn, total_steps=1, **options)
    before = [v.numpy() for v in trainer.variables]
    with tf.GradientTape() as tape:
        total = trainer.detector.compute_losses({k: tf.constant(v) for k, v in batch.items()})["total"]
    grads = tape.gradient(total, trainer.variables)
    trainer.train()
    lr = 1e-3 * trainer.config.warmup_factor
    beta_2, eps = 0.999, 1e-7  # Keras Adam defaults
    checked = 0
    for v, g, w0, decay, mult in zip(trainer.variables, grads, before, trainer.decay, trainer.multipliers):
        if g is None:
            continue
        g = mult * (g.numpy() + decay * w0)
        # step 1: m = (1 - b1) g, v = (1 - b2) g², alpha = lr sqrt(1 - b2) / (1 - b1)
        want = w0 - lr * np.sqrt(1 - beta_2) * g / (np.sqrt(1 - beta_2) * np.abs(g) + eps)
        # Adam normalises by |g|: where g is at float-noise level (two evaluations of the same
        # gradient differ in their last bits) only the bound |update| <= lr is defined.
        clear = np.abs(g) > 1e-4 * np.abs(g).max()
        np.testing.assert_allclose(v.numpy()[clear], want[clear], rtol=1e-4, atol=1e-6, err_msg=v.name)
        assert np.all(np.abs(v.numpy() - w0) <= lr * 1.0001), v.name
        checked += 1
    assert checked > 100


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    fn, _ = _batch_fn()
    first = Trainer(SYNTHETIC, output_dir=str(tmp_path), train_dataset=fn, total_steps=4, checkpoint_every=2,
                    **DETERMINISTIC)
    result = first.train()
    assert result["steps"] == 4 and int(first.optimizer.iterations) == 4
    saved = [v.numpy() for v in first.detector.variables]
    # A new process of the same run: it restores step 4 (and its weights), then trains to 7.
    second = Trainer(SYNTHETIC, output_dir=str(tmp_path), train_dataset=fn, total_steps=7, checkpoint_every=2,
                     **DETERMINISTIC)
    second.checkpoints.restore_latest()
    assert int(second.optimizer.iterations) == 4
    for v, w in zip(second.detector.variables, saved):  # same structure; names differ by Keras suffixes
        np.testing.assert_array_equal(v.numpy(), w)
    assert float(second.schedule(4)) == float(first.schedule(4))
    result = second.train()
    assert result["steps"] == 7 and int(second.optimizer.iterations) == 7
    assert os.path.basename(result["checkpoint"]) == "ckpt-7"
    # Nothing more to do: a third start returns at once.
    third = Trainer(SYNTHETIC, output_dir=str(tmp_path), train_dataset=fn, total_steps=7, **DETERMINISTIC)
    assert third.train()["steps"] == 7
