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

Summaries (the chief, under <output>/tensorboard): `loss/<name>` and `learning_rate` every
`summary_every` steps and at the last one. With `eval_every > 0`, every `eval_every` steps and
once more after the final checkpoint, the current weights are evaluated on the eval set
(`TrainingEvaluator`): the 12 COCO statistics as `eval/AP`, `eval/AP50`, ... and a few images
with their detections as `eval/detections`.
"""
import collections
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from lhrcnn import depthwise
from lhrcnn.config import load_config, load_network_module
from lhrcnn.errors import UserError
from lhrcnn.evaluation import coco_eval
from lhrcnn.keras import keras
from lhrcnn.paths import config_path, experiment_output_dir, require_dir, require_file
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


def frozen_backbone_warning(config):
    """The one-line warning for a run that starts from random weights while its backbone_options
    freeze the BatchNorms or the stem (freeze_bn / freeze_stem True, the recipe for an ImageNet-
    initialised backbone); None when neither option is True."""
    options = config.backbone_options or {}
    frozen = [name for name in ("freeze_bn", "freeze_stem") if options.get(name)]
    if not frozen:
        return None
    return (f"warning: training from random weights (no --init-checkpoint, no checkpoint to resume) with "
            f"backbone_options {', '.join(f'{name}=True' for name in frozen)}, the recipe for an ImageNet-initialised backbone: "
            f"frozen BatchNorms keep their initial statistics and a frozen stem its random kernels; set them to "
            f"False in backbone_options to train from scratch, or pass --init-checkpoint")


# Drawn eval images: detections at or above this score, at most DRAW_MAX_DETECTIONS per image
# (the best), each image scaled to at most DRAW_MAX_SIDE pixels on its long side.
DRAW_SCORE_THRESHOLD = 0.3
DRAW_MAX_DETECTIONS = 20
DRAW_MAX_SIDE = 512
GROUND_TRUTH_COLOR = (255, 255, 255)


class TrainingEvaluator:
    """COCO evaluation of a training run's current weights, on the chief.

    The eval set is read and checked at construction (UserError naming the path when it is
    missing, unreadable or has no image). The evaluation runs on a copy of the detector with
    plain (non-distributed) variables, built once: each `evaluate(detector)` copies the
    training detector's values into it and runs inference mode (training=False) over the eval
    set, so the training detector, its optimizer, the training data iterator and the checkpoints
    are never touched, and no collective op runs during the evaluation. The copy of the values
    is the only part that every worker must run (under multi-worker training, reading
    replica-local BN statistics is collective); on the others `evaluate` returns None.

    Args:
      config: the experiment's Config (eval image sizes, class names).
      annotations, images: the eval set (COCO json, image folder); config paths.
      images_to_draw: how many eval images (the first, in image-id order) `evaluate` draws.
      chief: whether this worker evaluates.
      batch_size: images per inference call.
    Then `attach(build_detector, detector)` builds the copy.
    """

    def __init__(self, config, annotations, images, *, images_to_draw=4, chief=True, batch_size=1):
        self.annotations = require_file(config_path(annotations), "eval annotation file")
        self.images = require_dir(config_path(images), "eval image folder")
        self.chief = chief
        self.images_to_draw = int(images_to_draw)
        self.max_image_pixels = int(config.max_image_pixels)
        if not chief:
            return
        from lhrcnn.data.coco import load_coco
        from lhrcnn.data.pipeline import make_dataset
        try:
            self.data = load_coco(self.annotations, self.images, class_names=config.class_names)
            self.ground_truth = coco_eval.load_ground_truth(self.annotations)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot read the eval set {self.annotations} (images in {self.images}): {e}") from None
        if not self.data.records:
            raise UserError(f"the eval set {self.annotations} has no image to evaluate (images in {self.images}; "
                            f"files that do not exist are dropped and named in the warnings above)")
        self.tf_dataset = make_dataset(self.data, config, training=False, batch_size=batch_size)
        self.class_names = self.data.class_names
        self.model = self._infer = None

    @property
    def num_images(self):
        return len(self.data.records)

    def attach(self, build_detector, detector):
        """On the chief: builds the evaluation copy (`build_detector()` -> a built detector of the
        training detector's structure, called outside any strategy scope) and checks that its
        variables match `detector`'s (count and shapes, in order; ValueError otherwise)."""
        if not self.chief:
            return
        self.model = build_detector()
        spec = {"images": tf.TensorSpec([None, None, None, 3], tf.float32),
                "image_info": tf.TensorSpec([None, 5], tf.float32)}
        # traced once; run_inference's own wrapper around it then only adds a call
        self._infer = tf.function(lambda inputs: self.model(inputs, training=False), input_signature=[spec],
                                  autograph=False)
        ours, theirs = self.model.variables, detector.variables
        mismatch = [(a.name, a.shape, b.shape) for a, b in zip(ours, theirs) if a.shape != b.shape]
        if len(ours) != len(theirs) or mismatch:
            raise ValueError(f"the evaluation copy of the detector has {len(ours)} variables, the trained one "
                             f"{len(theirs)}; first shape mismatches: {mismatch[:3]}")

    def evaluate(self, detector):
        """Evaluates `detector`'s current weights. Every worker must call it (see the class).

        Returns (on the chief): (CocoStats, drawn images uint8 [N, H, W, 3] or None,
        run_inference's speed dict); None elsewhere."""
        values = [v.numpy() for v in detector.variables]
        if not self.chief:
            return None
        for variable, value in zip(self.model.variables, values):
            variable.assign(value)
        results, image_ids, speed = coco_eval.run_inference(self._infer, self.tf_dataset, self.data.category_ids,
                                                            num_images=self.num_images)
        stats = coco_eval.evaluate(self.ground_truth, results, image_ids=image_ids, verbose=False)
        return stats, self.draw(results), speed

    def draw(self, results):
        """The first `images_to_draw` eval images with their ground truth (thin white boxes) and
        the detections in `results` (COCO entries) above DRAW_SCORE_THRESHOLD, each scaled to fit
        DRAW_MAX_SIDE and padded (black, bottom/right) to the largest: uint8 [N, H, W, 3], or
        None when there is nothing to draw."""
        from PIL import Image, ImageDraw

        from lhrcnn.visualize import draw_detections
        records = self.data.records[:max(0, self.images_to_draw)]
        if not records:
            return None
        wanted = {r.image_id for r in records}
        class_of_category = {int(cid): i for i, cid in enumerate(self.data.category_ids)
                             if i > 0 and cid is not None and int(cid) >= 0}
        detections = collections.defaultdict(list)
        for entry in results:
            if int(entry["image_id"]) in wanted and entry["score"] > DRAW_SCORE_THRESHOLD:
                detections[int(entry["image_id"])].append(entry)
        canvases = []
        for record in records:
            try:
                with Image.open(record.path) as image:
                    if image.width * image.height > self.max_image_pixels:  # the pipeline skipped it too
                        raise OSError(f"{record.path} is larger than max_image_pixels")
                    canvas = image.convert("RGB")
            except (OSError, Image.DecompressionBombError):  # unreadable now: a grey image of the annotated size
                canvas = Image.new("RGB", (record.width, record.height), (128, 128, 128))
            draw = ImageDraw.Draw(canvas)
            for x1, y1, x2, y2 in record.boxes.tolist():
                draw.rectangle([x1, y1, x2, y2], outline=GROUND_TRUTH_COLOR, width=1)
            best = sorted(detections[record.image_id], key=lambda e: -e["score"])[:DRAW_MAX_DETECTIONS]
            dets = []
            for entry in best:
                x, y, w, h = entry["bbox"]
                index = class_of_category.get(int(entry["category_id"]), 0)
                dets.append({"box": (x, y, x + w, y + h), "class": self.class_names[index], "class_index": index,
                             "score": float(entry["score"])})
            canvas = draw_detections(np.asarray(canvas), dets)
            canvas.thumbnail((DRAW_MAX_SIDE, DRAW_MAX_SIDE))
            canvases.append(np.asarray(canvas, np.uint8))
        height, width = max(c.shape[0] for c in canvases), max(c.shape[1] for c in canvases)
        out = np.zeros((len(canvases), height, width, 3), np.uint8)
        for i, c in enumerate(canvases):
            out[i, :c.shape[0], :c.shape[1]] = c
        return out


class Trainer:
    """Trains an experiment. `Trainer(experiment_dir).train()`; see scripts/train.py.

    Args (besides the config fields, `**config_overrides`; None for one of the integer
    arguments means its default):
      output_dir: default output/<user>/<experiment>/ (model_dump/, tensorboard/).
      strategy: a tf.distribute strategy (default: the current one).
      init_checkpoint: weights to start from when the run has no checkpoint of its own.
      total_steps: default: the config's schedule.
      checkpoint_every: steps between checkpoints (and one at the end).
      summary_every: steps between the loss and learning-rate scalars (and the last step);
        0: the last step only.
      log_every_seconds: seconds between progress lines.
      train_dataset: see `distributed_dataset`.
      eval_every: steps between evaluations on the eval set (and one after the final
        checkpoint); 0: none.
      eval_annotations, eval_images: the eval set (default: the config's); read and checked
        here when eval_every > 0.
      eval_images_to_draw: eval images drawn with their detections into each evaluation's
        `eval/detections` image summary.
    """

    def __init__(self, experiment_dir, *, output_dir=None, strategy=None, init_checkpoint=None,
                 total_steps=None, checkpoint_every=500, summary_every=20, log_every_seconds=10.0,
                 train_dataset=None, eval_every=0, eval_annotations=None, eval_images=None,
                 eval_images_to_draw=4, **config_overrides):
        eval_every = 0 if eval_every is None else eval_every
        summary_every = 20 if summary_every is None else summary_every
        eval_images_to_draw = 4 if eval_images_to_draw is None else eval_images_to_draw
        for name, value in (("eval_every", eval_every), ("summary_every", summary_every),
                            ("eval_images_to_draw", eval_images_to_draw)):
            if int(value) != value or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        self.experiment_dir = experiment_dir
        self.config = c = load_config(experiment_dir, **config_overrides)
        if c.seed is not None:
            # Python, NumPy, TF and Keras's generators: the same seed gives the same initial
            # weights and the same in-graph anchor and RoI sampling (the data pipeline takes
            # c.seed itself, in distributed_dataset).
            keras.utils.set_random_seed(c.seed)
        if c.class_names_source:  # class_names = "from_annotations"
            names = ", ".join(c.class_names[1:11]) + (", ..." if c.num_classes > 11 else "")
            logging.info("%d classes from %s: %s", c.num_classes - 1, c.class_names_source, names)
        self.output_dir = output_dir or experiment_output_dir(c, experiment_dir)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        self.chief = distribute.is_chief(self.strategy)
        self.global_batch = c.train_batch_per_gpu * self.replicas
        iters_per_epoch = max(1, c.nr_image_per_epoch // self.global_batch)
        self.schedule = WarmupMultiStageLR(c.basic_lr * self.replicas, iters_per_epoch, c.warmup_iters,
                                           c.warmup_factor, c.lr_stages)
        self.total_steps = int(total_steps or self.schedule.total_steps)
        self.checkpoint_every, self.summary_every = checkpoint_every, int(summary_every)
        self.log_every_seconds = log_every_seconds
        self.eval_every = int(eval_every)
        self.evaluator = None
        if self.eval_every:  # the eval set is read (and its errors raised) before the model is built
            self.evaluator = TrainingEvaluator(c, eval_annotations or c.eval_annotations, eval_images or c.eval_images,
                                               images_to_draw=eval_images_to_draw, chief=self.chief)
        with self.strategy.scope():
            network = load_network_module(experiment_dir)
            if c.mixed_precision:
                self.detector = distribute.build_with_backbone_precision(lambda: network.build_network(c),
                                                                         c.mixed_precision)
            else:
                self.detector = network.build_network(c).build_with_dummy_input()
            if c.jit_compile:
                self.detector.jit_compile_backbone = True
            if c.depthwise_filter_grad == "custom":
                depthwise.use_compiled_filter_grad(self.detector)
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
        # True when the caller loaded weights into self.detector itself (the CLI's TF1 --init-checkpoint)
        self.initialized_externally = False
        self._train_dataset = train_dataset
        if self.evaluator is not None:
            def build_eval_copy():  # plain variables: built outside the strategy's scope
                if c.mixed_precision:
                    return distribute.build_with_backbone_precision(lambda: network.build_network(c),
                                                                    c.mixed_precision)
                return network.build_network(c).build_with_dummy_input()
            self.evaluator.attach(build_eval_copy, self.detector)

    # ------------------------------------------------------------------ data
    def load_train_data(self):
        """The training set; a file that cannot be used is a DataError (one line naming it)."""
        from lhrcnn.data.coco import load_coco
        from lhrcnn.errors import DataError, MissingPathError
        c = self.config
        try:
            return load_coco(config_path(c.train_annotations), config_path(c.train_images), class_names=c.class_names)
        except (MissingPathError, DataError):
            raise
        except FileNotFoundError as e:
            raise MissingPathError(f"training data: {e}") from None
        except ValueError as e:
            raise DataError(f"training data: {e}") from None

    def distributed_dataset(self, seed, start_step=0):
        """Per-replica batches through `strategy.distribute_datasets_from_function`: each worker
        (input pipeline) reads its own shard of the records (every `num_input_pipelines`-th one,
        so workers never see the same image in a pass) and batches `train_batch_per_gpu` images
        per replica; its consecutive batches go to its replicas in turn.

        `train_dataset` may be a DetectionDataset (-> the tf.data pipeline) or a function
        (input_context, per_replica_batch, seed) -> tf.data.Dataset of batch dicts; default: the
        config's training annotations. `start_step`: the pipeline starts where a run that made
        that many steps left it (a function gets `seed + start_step` instead; None when seed is None)."""
        data = self._train_dataset if self._train_dataset is not None else self.load_train_data()
        global_batch = self.global_batch

        def dataset_fn(ctx):
            per_replica = ctx.get_per_replica_batch_size(global_batch)
            if callable(data):
                return data(ctx, per_replica, None if seed is None else seed + start_step)
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

    @tf.function(autograph=False)
    def _train_step(self, iterator):
        losses = self.strategy.run(self._replica_step, args=(next(iterator),))
        return {k: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in losses.items()}

    # ------------------------------------------------------------------ loop
    def restore_or_initialize(self):
        """Restores the run's latest checkpoint, else initialises from init_checkpoint; a run that
        starts from random weights (neither, nor initialized_externally) with frozen BatchNorms or
        stem logs frozen_backbone_warning. Returns the checkpoint resumed from, or None."""
        resumed = self.checkpoints.restore_latest()
        if resumed:
            return resumed
        if self.init_checkpoint:
            initialize_from(self.detector, self.init_checkpoint)
        elif not self.initialized_externally:
            warning = frozen_backbone_warning(self.config)
            if warning:
                logging.warning("%s", warning)
        return None

    def train(self):
        c = self.config
        self.checkpoints.prepare()  # debris of killed saves removed; a folder that takes no checkpoint fails here
        self.restore_or_initialize()
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
        eval_seconds, final_eval = 0.0, None
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
                if (self.summary_every and step % self.summary_every == 0) or step == self.total_steps:
                    with writer.as_default(step=step):
                        for k, v in last.items():
                            tf.summary.scalar(f"loss/{k}", v)
                        tf.summary.scalar("learning_rate", lr)
                if step % self.checkpoint_every == 0 and step != self.total_steps:
                    self.checkpoints.save(step)
                if self.eval_every and step % self.eval_every == 0 and step != self.total_steps:
                    _, seconds = self._evaluate(step, writer)
                    eval_seconds += seconds
                    progress.start_time += seconds  # the step rate and ETA count training time only
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
        if self.eval_every:  # the weights of the final checkpoint
            final_eval, seconds = self._evaluate(step, writer)
            eval_seconds += seconds
        writer.flush()
        seconds = time.time() - t0
        fingerprint = distribute.model_fingerprint(self.detector)
        print(f"trained {step - start} steps in {seconds:.0f} s "
              f"({(step - start) * self.global_batch / max(seconds - eval_seconds, 1e-9):.2f} img/s"
              + (f"; evaluations {eval_seconds:.0f} s" if self.eval_every else "")
              + f"); checkpoint {path}; model fingerprint {fingerprint}", flush=True)
        result = {"steps": step, "checkpoint": path, "losses": last, "seconds": seconds, "fingerprint": fingerprint}
        if self.eval_every:
            result["eval"] = final_eval
        return result

    def _evaluate(self, step, writer):
        """Evaluates the current weights (TrainingEvaluator; every worker calls it), writes the
        summaries and prints one line on the chief. Returns (the metrics: the 12 statistics by
        name plus step, images, seconds; None except on the chief), seconds it took)."""
        t = time.time()
        out = self.evaluator.evaluate(self.detector)
        if out is None:
            return None, time.time() - t
        stats, drawn, speed = out
        with writer.as_default(step=step):
            for name in coco_eval.STAT_NAMES:
                tf.summary.scalar(f"eval/{name}", stats[name])
            if drawn is not None:
                tf.summary.image("eval/detections", drawn, max_outputs=len(drawn))
        writer.flush()
        seconds = time.time() - t
        print(f"eval at step {step}: AP {stats['AP']:.3f}  AP50 {stats['AP50']:.3f}  ({speed['images']} images of "
              f"{self.evaluator.annotations}, {seconds:.1f} s)", flush=True)
        return {**stats, "step": step, "images": speed["images"], "seconds": seconds}, seconds
