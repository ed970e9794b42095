"""The training loop (shared/DESIGN.md §3.3): a custom loop under any tf.distribute strategy.

Per replica: losses of its batch (`detector.compute_losses`), scaled by 1/replicas so the summed
gradient is the mean; L2 weight decay `weight_decay · w` added to the gradient of conv/fc kernels
only, once overall (the original added its regulariser on one tower); gradients of variables
whose name contains a `gradient_multipliers` key scaled (the original's x3 on `conv_new*`);
SGD with momentum (or Adam, `optimizer="adam"`); learning rate `basic_lr · replicas` with warm-up and a multi-stage policy.
Checkpoints every `checkpoint_every` steps and at the end; a restart resumes from the latest.
Before the final checkpoint, `precise_bn_batches > 0` recomputes the trained BNs' moving statistics
(lhrcnn/train/precise_bn.py); intermediate checkpoints keep the EMA statistics.
"""
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from lhrcnn.config import load_config, load_network_module
from lhrcnn.keras import keras
from lhrcnn.progress import Progress
from lhrcnn.train.checkpoints import TrainingCheckpoints, initialize_from
from lhrcnn.train.precise_bn import recompute_batch_norm_statistics
from lhrcnn.train.schedules import WarmupMultiStageLR

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def resolve_path(path):
    """A config path as given when it exists (absolute or relative to the CWD), else relative to
    the repository root (configs name data/... paths, as the original did)."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(ROOT, path)


def is_decayed(variable):
    """Weight decay applies to convolution and fully connected kernels only (not biases, BN)."""
    name = variable.name.split(":")[0].rsplit("/", 1)[-1]
    return name.endswith("kernel")


def gradient_multiplier(variable, multipliers):
    for key, value in multipliers.items():
        if key in variable.name:
            return float(value)
    return 1.0


class Trainer:
    """Trains an experiment. `Trainer(experiment_dir).train()`; see scripts/train.py."""

    def __init__(self, experiment_dir, *, output_dir=None, strategy=None, init_checkpoint=None,
                 total_steps=None, checkpoint_every=500, summary_every=20, log_every_seconds=10.0,
                 train_dataset=None, **config_overrides):
        self.experiment_dir = experiment_dir
        self.config = c = load_config(experiment_dir, **config_overrides)
        self.output_dir = output_dir or c.output_dir(experiment_dir)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        self.global_batch = c.train_batch_per_gpu * self.replicas
        iters_per_epoch = max(1, c.nr_image_per_epoch // self.global_batch)
        self.schedule = WarmupMultiStageLR(c.basic_lr * self.replicas, iters_per_epoch, c.warmup_iters,
                                           c.warmup_factor, c.lr_stages)
        self.total_steps = int(total_steps or self.schedule.total_steps)
        self.checkpoint_every, self.summary_every = checkpoint_every, summary_every
        self.log_every_seconds = log_every_seconds
        with self.strategy.scope():
            self.detector = load_network_module(experiment_dir).build_network(c).build_with_dummy_input()
            ema = dict(use_ema=c.ema_decay > 0, ema_momentum=c.ema_decay if c.ema_decay > 0 else 0.99)
            if c.optimizer == "adam":
                self.optimizer = keras.optimizers.Adam(learning_rate=self.schedule, beta_1=c.momentum, **ema)
            else:
                self.optimizer = keras.optimizers.SGD(learning_rate=self.schedule, momentum=c.momentum, **ema)
            self.variables = list(self.detector.trainable_variables)
            self.optimizer.build(self.variables)
        self.decay = [c.weight_decay if is_decayed(v) else 0.0 for v in self.variables]
        self.multipliers = [gradient_multiplier(v, c.gradient_multipliers) for v in self.variables]
        self.checkpoints = TrainingCheckpoints(os.path.join(self.output_dir, "model_dump"),
                                               model=self.detector, optimizer=self.optimizer)
        self.init_checkpoint = init_checkpoint
        self._train_dataset = train_dataset

    # ------------------------------------------------------------------ data
    def load_train_data(self):
        from lhrcnn.data.coco import load_coco
        c = self.config
        return load_coco(resolve_path(c.train_annotations), resolve_path(c.train_images), class_names=c.class_names)

    def distributed_dataset(self, seed):
        """Per-replica batches: `train_dataset` may be a DetectionDataset (-> the tf.data pipeline,
        sharded per input pipeline) or a function (input_context, per_replica_batch, seed) ->
        tf.data.Dataset of batch dicts; default: the config's training annotations."""
        data = self._train_dataset if self._train_dataset is not None else self.load_train_data()
        global_batch = self.global_batch

        def dataset_fn(ctx):
            per_replica = ctx.get_per_replica_batch_size(global_batch)
            if callable(data):
                return data(ctx, per_replica, seed)
            from lhrcnn.data.pipeline import make_dataset
            return make_dataset(data, self.config, training=True, batch_size=per_replica, seed=seed,
                                shard=(ctx.num_input_pipelines, ctx.input_pipeline_id))
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    # ------------------------------------------------------------------ step
    def _replica_step(self, batch):
        with tf.GradientTape() as tape:
            losses = self.detector.compute_losses(batch, training=True)
            scaled = losses["total"] / self.replicas
        grads = tape.gradient(scaled, self.variables)
        if self.config.gradient_clip_norm:
            # Global norm over this replica's share; the summed update is bounded by replicas x norm.
            grads, _ = tf.clip_by_global_norm(grads, self.config.gradient_clip_norm / self.replicas)
        out = []
        for g, v, decay, mult in zip(grads, self.variables, self.decay, self.multipliers):
            if g is None:
                continue
            if decay:
                g = g + (decay / self.replicas) * v
            if mult != 1.0:
                g = g * mult
            out.append((g, v))
        self.optimizer.apply_gradients(out)
        return losses

    @tf.function
    def _train_step(self, iterator):
        losses = self.strategy.run(self._replica_step, args=(next(iterator),))
        return {k: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in losses.items()}

    # ------------------------------------------------------------------ loop
    def train(self):
        c = self.config
        resumed = self.checkpoints.restore_latest()
        if not resumed and self.init_checkpoint:
            initialize_from(self.detector, self.init_checkpoint)
        start = int(self.optimizer.iterations.numpy())
        if start >= self.total_steps:
            logging.info("already trained for %d steps (of %d)", start, self.total_steps)
            return {"steps": start}
        iterator = iter(self.distributed_dataset(seed=c.seed + start))
        writer = tf.summary.create_file_writer(os.path.join(self.output_dir, "tensorboard"))
        progress = Progress(self.total_steps, name="train", unit="step", items_per_unit=self.global_batch,
                            every_seconds=self.log_every_seconds, start=start)
        print(f"training {os.path.basename(os.path.abspath(self.experiment_dir))}: steps {start} -> "
              f"{self.total_steps}, {self.replicas} replica(s) x {c.train_batch_per_gpu} images, "
              f"output {self.output_dir}", flush=True)
        t0, last = time.time(), {}
        step = start
        for step in range(start + 1, self.total_steps + 1):
            losses = self._train_step(iterator)
            last = {k: float(v) for k, v in losses.items()}
            if not np.isfinite(last["total"]):
                raise FloatingPointError(f"non-finite loss at step {step}: {last}; the last good checkpoint "
                                         f"is {self.checkpoints.manager.latest_checkpoint}")
            lr = float(self.schedule(step - 1))
            progress.update(step, loss=last["total"], rpn_cls=last["rpn_cls"], rpn_box=last["rpn_box"],
                            rcnn_cls=last["rcnn_cls"], rcnn_box=last["rcnn_box"], lr=lr)
            if step % self.summary_every == 0 or step == self.total_steps:
                with writer.as_default(step=step):
                    for k, v in last.items():
                        tf.summary.scalar(f"loss/{k}", v)
                    tf.summary.scalar("learning_rate", lr)
            if step % self.checkpoint_every == 0 and step != self.total_steps:
                self.checkpoints.save(step)
        if c.precise_bn_batches:
            t1 = time.time()
            n = recompute_batch_norm_statistics(self.detector, iterator, int(c.precise_bn_batches), self.strategy)
            print(f"precise BN: statistics of {n} BN layers recomputed over {c.precise_bn_batches} batches "
                  f"in {time.time() - t1:.0f} s", flush=True)
        path = self.checkpoints.save(step)
        writer.flush()
        seconds = time.time() - t0
        print(f"trained {step - start} steps in {seconds:.0f} s "
              f"({(step - start) * self.global_batch / max(seconds, 1e-9):.2f} img/s); checkpoint {path}", flush=True)
        return {"steps": step, "checkpoint": path, "losses": last, "seconds": seconds}
