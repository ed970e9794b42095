"""The original's learning-rate policy (docs/original.md#training): `warmup_iters` iterations rising linearly
from `warmup_factor · lr` to `lr` before epoch 0, then a multi-stage policy by epoch
((end_epoch, factor), ...): epochs below the first end use lr · factor_1, and so on."""
import tensorflow as tf

from lhrcnn.keras import keras


class WarmupMultiStageLR(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step): step < W: base · (f + (1 - f) · step / W); else base · factor of the stage that
    contains epoch (step - W) // iters_per_epoch (the last stage's factor past the end)."""

    def __init__(self, base_lr, iters_per_epoch, warmup_iters=500, warmup_factor=1.0 / 3.0,
                 stages=((19, 1.0), (25, 0.1), (30, 0.01))):
        if iters_per_epoch < 1:
            raise ValueError(f"iters_per_epoch must be >= 1, got {iters_per_epoch}")
        ends = [int(e) for e, _ in stages]
        if not ends or ends != sorted(ends) or ends[0] < 1:
            raise ValueError(f"lr stages must be increasing (end_epoch, factor) pairs, got {stages!r}")
        self.base_lr, self.iters_per_epoch = float(base_lr), int(iters_per_epoch)
        self.warmup_iters, self.warmup_factor = int(warmup_iters), float(warmup_factor)
        self.stages = tuple((int(e), float(f)) for e, f in stages)

    @property
    def total_steps(self):
        return self.warmup_iters + self.stages[-1][0] * self.iters_per_epoch

    def epoch(self, step):
        return max(0, int(step) - self.warmup_iters) // self.iters_per_epoch

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.base_lr * (self.warmup_factor + (1.0 - self.warmup_factor) * step / max(1, self.warmup_iters))
        epoch = tf.floor((step - self.warmup_iters) / self.iters_per_epoch)
        factor = tf.constant(self.stages[-1][1])
        for end, f in reversed(self.stages):
            factor = tf.where(epoch < end, f, factor)
        return tf.where(step < self.warmup_iters, warm, self.base_lr * factor)

    def get_config(self):
        return {"base_lr": self.base_lr, "iters_per_epoch": self.iters_per_epoch,
                "warmup_iters": self.warmup_iters, "warmup_factor": self.warmup_factor, "stages": self.stages}
