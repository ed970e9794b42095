"""The training loop (docs/original.md#training): a custom loop under any tf.distribute strategy
(one device, MirroredStrategy, MultiWorkerMirroredStrategy; lhrcnn/train/distribute.py).

Per replica: losses of its batch (`detector.compute_losses`: OHEM and target sampling per
replica, as the original's towers), scaled by 1/replicas; the gradients are all-reduced (summed)
across replicas, so every replica holds the gradient of the global batch's mean loss; then, once
and identically everywhere: the global-norm clip (`gradient_clip_norm`), L2 weight decay
`weight_decay · w` on conv/fc kernels only, the `gradient_multipliers` (the original's x3 on
`conv_new*`), and SGD with momentum (or Adam, `optimizer="adam"`) with learning rate
`basic_lr · replicas`, warm-up and a multi-stage policy.
Checkpoints every `checkpoint_every` steps and at the end (only the chief writes into model_dump/);
a restart resumes from the latest with the same step, learning rate and data position.
Before the final checkpoint, `precise_bn_batches > 0` recomputes the trained BNs' moving statistics
(lhrcnn/train/precise_bn.py); intermediate checkpoints keep the EMA statistics.
Options: `mixed_precision` ("mixed_float16" with dynamic loss scaling, or "mixed_bfloat16") runs
the backbone in half precision, everything after it and the losses in float32; `jit_compile`
compiles the backbone (forward and backward) with XLA; `sync_batch_norm` normalises trained
BatchNorms with the global batch's statistics.
"""
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from lhrcnn.config import load_config, load_network_module
from lhrcnn.keras import keras
from lhrcnn.paths import config_path, experiment_output_dir
from lhrcnn.progress import Progress
from lhrcnn.train import distribute
from lhrcnn.train.checkpoints import TrainingCheckpoints, initialize_from
from lhrcnn.train.precise_bn import recompute_batch_norm_statistics
from lhrcnn.train.schedules import WarmupMultiStageLR


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
        self.output_dir = output_dir or experiment_output_dir(c, experiment_dir)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        self.chief = distribute.is_chief(self.strategy)
        self.global_batch = c.train_batch_per_gpu * self.replicas
        iters_per_epoch = max(1, c.nr_image_per_epoch // self.global_batch)
        self.schedule = WarmupMultiStageLR(c.basic_lr * self.replicas, iters_per_epoch, c.warmup_iters,
                                           c.warmup_factor, c.lr_stages)
        self.total_steps = int(total_steps or self.schedule.total_steps)
        self.checkpoint_every, self.summary_every = checkpoint_every, summary_every
        self.log_every_seconds = log_every_seconds
        with self.strategy.scope():
            network = load_network_module(experiment_dir)
            if c.mixed_precision:
                self.detector = distribute.build_with_backbone_precision(lambda: network.build_network(c),
                                                                         c.mixed_precision)
            else:
                self.detector = network.build_network(c).build_with_dummy_input()
            if c.jit_compile:
                self.detector.jit_compile_backbone = True
            if c.sync_batch_norm:
                distribute.enable_sync_batch_norm(self.detector)
            ema = dict(use_ema=c.ema_decay > 0, ema_momentum=c.ema_decay if c.ema_decay > 0 else 0.99)
            if c.optimizer == "adam":
                self.optimizer = keras.optimizers.Adam(learning_rate=self.schedule, beta_1=c.momentum, **ema)
            else:
                self.optimizer = keras.optimizers.SGD(learning_rate=self.schedule, momentum=c.momentum, **ema)
            # float16 gradients of small losses underflow: dynamic loss scaling (bfloat16 has float32's range)
            self.loss_scaling = c.mixed_precision == "mixed_float16"
            if self.loss_scaling:
                self.optimizer = keras.mixed_precision.LossScaleOptimizer(self.optimizer)
            self.variables = list(self.detector.trainable_variables)
            self.optimizer.build(self.variables)
        self.decay = [c.weight_decay if is_decayed(v) else 0.0 for v in self.variables]
        self.multipliers = [gradient_multiplier(v, c.gradient_multipliers) for v in self.variables]
        model_dump = os.path.join(self.output_dir, "model_dump")
        self.checkpoints = TrainingCheckpoints(model_dump, model=self.detector, optimizer=self.optimizer,
                                               write_directory=distribute.worker_directory(model_dump, self.strategy))
        self.init_checkpoint = init_checkpoint
        self._train_dataset = train_dataset

    # ------------------------------------------------------------------ data
    def load_train_data(self):
        from lhrcnn.data.coco import load_coco
        c = self.config
        return load_coco(config_path(c.train_annotations), config_path(c.train_images), class_names=c.class_names)

    def distributed_dataset(self, seed, start_step=0):
        """Per-replica batches through `strategy.distribute_datasets_from_function`: each worker
        (input pipeline) reads its own shard of the records (every `num_input_pipelines`-th one,
        so workers never see the same image in a pass) and batches `train_batch_per_gpu` images
        per replica; its consecutive batches go to its replicas in turn.

        `train_dataset` may be a DetectionDataset (-> the tf.data pipeline) or a function
        (input_context, per_replica_batch, seed) -> tf.data.Dataset of batch dicts; default: the
        config's training annotations. `start_step`: the pipeline starts where a run that made
        that many steps left it (a function gets `seed + start_step` instead)."""
        data = self._train_dataset if self._train_dataset is not None else self.load_train_data()
        global_batch = self.global_batch

        def dataset_fn(ctx):
            per_replica = ctx.get_per_replica_batch_size(global_batch)
            if callable(data):
                return data(ctx, per_replica, seed + start_step)
            from lhrcnn.data.pipeline import make_dataset
            local_replicas = ctx.num_replicas_in_sync // ctx.num_input_pipelines
            return make_dataset(data, self.config, training=True, batch_size=per_replica, seed=seed,
                                shard=(ctx.num_input_pipelines, ctx.input_pipeline_id),
                                skip=start_step * per_replica * local_replicas)
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    # ------------------------------------------------------------------ step
    def _replica_step(self, batch):
        c = self.config
        with tf.GradientTape() as tape:
            losses = self.detector.compute_losses(batch, training=True)
            scaled = losses["total"] / self.replicas
            if self.loss_scaling:
                scaled = self.optimizer.get_scaled_loss(scaled)
        pairs = [(g, v, decay, mult) for g, v, decay, mult in
                 zip(tape.gradient(scaled, self.variables), self.variables, self.decay, self.multipliers)
                 if g is not None]
        grads = [tf.convert_to_tensor(g) for g, _, _, _ in pairs]
        if self.loss_scaling:
            grads = self.optimizer.get_unscaled_gradients(grads)
        if self.replicas > 1:
            # The sum over replicas of (replica loss / replicas): the global batch's gradient, the
            # same on every replica; the clip, decay and multipliers below then act on it once.
            grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        if c.gradient_clip_norm:
            grads, _ = tf.clip_by_global_norm(grads, c.gradient_clip_norm)
        out = []
        for g, (_, v, decay, mult) in zip(grads, pairs):
            if decay:
                g = g + decay * v
            if mult != 1.0:
                g = g * mult
            out.append((g, v))
        self.optimizer.apply_gradients(out, skip_gradients_aggregation=True)
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
        iterator = iter(self.distributed_dataset(seed=c.seed, start_step=start))
        task_type, task_id = distribute.task_of(self.strategy)
        if self.chief:
            writer = tf.summary.create_file_writer(os.path.join(self.output_dir, "tensorboard"))
        else:  # only the chief writes summaries
            writer = tf.summary.create_noop_writer()
        progress = Progress(self.total_steps, name="train" if self.chief else f"train [{task_type} {task_id}]",
                            unit="step", items_per_unit=self.global_batch, start=start,
                            every_seconds=self.log_every_seconds if self.chief else 6 * self.log_every_seconds)
        print(f"training {os.path.basename(os.path.abspath(self.experiment_dir))}: steps {start} -> "
              f"{self.total_steps}, {self.replicas} replica(s) x {c.train_batch_per_gpu} images "
              f"({distribute.strategy_name(self.strategy)}"
              + (f", {task_type} {task_id}{' (chief)' if self.chief else ''}" if distribute.cluster_size() else "")
              + f"), output {self.output_dir}", flush=True)
        t0, last = time.time(), {}
        step = start
        try:
            for step in range(start + 1, self.total_steps + 1):
                losses = self._train_step(iterator)
                last = {k: float(v) for k, v in losses.items()}
                if not np.isfinite(last["total"]):
                    raise FloatingPointError(f"non-finite loss at step {step}: {last}; the last good checkpoint "
                                             f"is {self.checkpoints.latest()}")
                lr = float(self.schedule(step - 1))
                # every loss the stages return, after the total
                progress.update(step, loss=last["total"], **{k: v for k, v in last.items() if k != "total"}, lr=lr)
                if step % self.summary_every == 0 or step == self.total_steps:
                    with writer.as_default(step=step):
                        for k, v in last.items():
                            tf.summary.scalar(f"loss/{k}", v)
                        tf.summary.scalar("learning_rate", lr)
                if step % self.checkpoint_every == 0 and step != self.total_steps:
                    self.checkpoints.save(step)
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
                tf.errors.AbortedError) as e:
            if self.replicas == 1 and not distribute.cluster_size():
                raise
            raise RuntimeError(
                f"{task_type} {task_id}: the cluster lost a worker at step {step} ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200]}). Restart the job (every worker, same TF_CONFIG): training "
                f"resumes from {self.checkpoints.latest() or 'the start (no checkpoint yet)'}.") from e
        if c.precise_bn_batches:
            t1 = time.time()
            n = recompute_batch_norm_statistics(self.detector, iterator, int(c.precise_bn_batches), self.strategy)
            print(f"precise BN: statistics of {n} BN layers recomputed over {c.precise_bn_batches} batches "
                  f"in {time.time() - t1:.0f} s", flush=True)
        path = self.checkpoints.save(step)
        writer.flush()
        seconds = time.time() - t0
        fingerprint = distribute.model_fingerprint(self.detector)
        print(f"trained {step - start} steps in {seconds:.0f} s "
              f"({(step - start) * self.global_batch / max(seconds, 1e-9):.2f} img/s); checkpoint {path}; "
              f"model fingerprint {fingerprint}", flush=True)
        return {"steps": step, "checkpoint": path, "losses": last, "seconds": seconds, "fingerprint": fingerprint}
