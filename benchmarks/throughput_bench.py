"""Throughput benchmark: training images/s of the main job's default experiment and of
the synthetic Xception* Light-Head (real synthetic images through the tf.data pipeline, the
Trainer's own distributed step) and of the R-101 experiment at 800x1333, the input pipeline's
images/s alone (it must deliver >= 3x what the faster model consumes), and evaluation images/s
(inference + COCO conversion, batch 1).

Data: the main job's data/synthetic/{train,val} (relative to the working directory, as the main
job's config paths are) when present, else a small synthetic set written to `work_dir` (default
output/bench_data/ in the working directory; generated once, then reused)."""
import gc
import os
import tempfile
import time

import numpy as np
import tensorflow as tf

from benchmarks.model_bench import R101, SYNTHETIC, random_ground_truth

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _synthetic_split(name, num_images, seed, work_dir):
    """(annotations.json, images dir) of data/synthetic/<name>, else a generated small set."""
    from lhrcnn.data import synthetic
    from lhrcnn.paths import config_path
    main = config_path(os.path.join("data", "synthetic", name))
    if os.path.isfile(os.path.join(main, "annotations.json")):
        return os.path.join(main, "annotations.json"), os.path.join(main, "images")
    out = os.path.join(work_dir, name)
    if not synthetic.is_complete(out, num_images, seed):
        synthetic.write_dataset(out, num_images, seed)
    return os.path.join(out, "annotations.json"), os.path.join(out, "images")


def _load(annotations, images, config):
    from lhrcnn.data.coco import load_coco
    return load_coco(annotations, images, class_names=config.class_names)


def _timed_steps(step, warmup, steps):
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def training_throughput(experiment, steps, warmup=3, train_dataset=None, **overrides):
    """(images/s, seconds/step, images/step) of the Trainer's step on one replica."""
    from lhrcnn.train.trainer import Trainer
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(experiment, output_dir=tmp, train_dataset=train_dataset, **overrides)
        iterator = iter(trainer.distributed_dataset(seed=0))
        seconds = _timed_steps(lambda: float(trainer._train_step(iterator)["total"]), warmup, steps)
        batch = trainer.global_batch
        # Stop the input pipeline here rather than whenever the garbage collector gets to it, so
        # that its decoding and prefetching threads do not run into the next measurement.
        del iterator, trainer
        gc.collect()
    return batch / seconds, seconds, batch


def _constant_batches(height, width, batch, num_classes, seed=0):
    """A dataset fn (as Trainer's train_dataset) repeating one batch of zero images of the given
    size with random boxes: with random (not ImageNet) weights and frozen BN, R-101 overflows on
    real images; the convolutions cost the same for any values."""
    boxes, classes = random_ground_truth(np.random.default_rng(seed), batch, height, width, num_classes)
    element = {"images": np.zeros((batch, height, width, 3), np.float32),
               "image_info": np.tile(np.array([[height, width, 1.0, height, width]], np.float32), (batch, 1)),
               "gt_boxes": boxes, "gt_classes": classes,
               "image_id": np.arange(batch, dtype=np.int64)}

    def fn(ctx, per_replica, seed):
        return tf.data.Dataset.from_tensors(element).repeat()
    return fn


def pipeline_throughput(dataset, config, batches, batch_size):
    """Images/s of the training pipeline alone (decode, resize, flip, pad, batch)."""
    from lhrcnn.data.pipeline import make_dataset
    iterator = iter(make_dataset(dataset, config, training=True, batch_size=batch_size, seed=0))
    seconds = _timed_steps(lambda: next(iterator)["images"].shape, 5, batches)
    return batch_size / seconds


def eval_throughput(experiment, dataset, num_images, passes=2):
    """(images/s of evaluation inference (run_inference: detector + COCO conversion, batch 1; the
    best of `passes` passes over the first num_images images: single passes on this shared
    2-core machine varied up to 2x), weights used): the main job's trained checkpoint when there
    is one (its detections are what post-processing sees in practice), else random weights."""
    import copy
    from lhrcnn.config import load_config
    from lhrcnn.detector import build_detector, load_detector
    from lhrcnn.data.pipeline import make_dataset
    from lhrcnn.evaluation.coco_eval import run_inference
    from lhrcnn.paths import experiment_output_dir
    output = experiment_output_dir(load_config(experiment), experiment)
    checkpoint = tf.train.latest_checkpoint(os.path.join(output, "model_dump"))
    detector = load_detector(experiment, checkpoint=checkpoint) if checkpoint else build_detector(experiment)
    subset = copy.copy(dataset)
    subset.records = dataset.records[:num_images]
    data = make_dataset(subset, detector.config, training=False, batch_size=1)
    rates = [run_inference(detector, data, subset.category_ids, progress=False)[2]["images_per_second"]
             for _ in range(passes)]
    return max(rates), checkpoint or "random weights"


def run(train_steps=30, r101_steps=2, pipeline_batches=100, eval_images=60, work_dir=None):
    """Rows for the main job's default experiment (ThunderNet SNet146) and the synthetic Xception*
    Light-Head (training, evaluation), the input pipeline alone (the same settings for both) and
    R-101 at 800x1333 (training)."""
    from lhrcnn.config import MAIN_JOB_EXPERIMENT, load_config
    work_dir = work_dir or os.path.abspath(os.path.join("output", "bench_data"))
    main_job = os.path.join(ROOT, MAIN_JOB_EXPERIMENT)
    config = load_config(main_job)
    train_files = _synthetic_split("train", 200, 1, work_dir)
    val_files = _synthetic_split("val", max(eval_images, 60), 2, work_dir)
    train = _load(*train_files, config)
    val = _load(*val_files, config)
    rows, training, weights = [], {}, {}
    size = f"{config.image_short_size}/{config.image_max_size}"
    models = (("main job default (ThunderNet SNet146, synthetic)", main_job),
              ("Xception* Light-Head, synthetic", SYNTHETIC))
    # Evaluation first, before the training runs fill the memory (decoded-image cache).
    for name, experiment in models:
        eval_ips, weights[name] = eval_throughput(experiment, val, eval_images)
        rows.append(dict(what=f"eval: {name} (inference + COCO results, batch 1)",
                         input=f"{config.eval_image_short_size}/{config.eval_image_max_size}", images_per_s=eval_ips))
    for name, experiment in models:
        ips, sps, per_step = training_throughput(experiment, train_steps, train_dataset=train)
        training[experiment] = ips
        rows.append(dict(what=f"train: {name}", input=size, images_per_s=ips, s_per_step=sps,
                         images_per_step=per_step))
    pipe = pipeline_throughput(train, config, pipeline_batches, config.train_batch_per_gpu)
    fastest = max(training.values())
    rows.insert(0, dict(what="input pipeline alone (the synthetic experiments' settings)", input=size,
                        images_per_s=pipe, x_training=pipe / fastest))
    if r101_steps:
        r101 = load_config(R101)
        fn = _constant_batches(800, 1344, r101.train_batch_per_gpu, r101.num_classes)  # 1333 padded to 32
        ips, sps, per_step = training_throughput(R101, r101_steps, warmup=1, train_dataset=fn,
                                                 box_delta_clip=float(np.log(1000 / 16)))
        rows.append(dict(what="train: R-101 PS-RoI-Align (COCO)", input="800x1333", images_per_s=ips,
                         s_per_step=sps, images_per_step=per_step))
    return rows, {"train_images": len(train.records), "pipeline_vs_training": pipe / fastest,
                  "eval_weights": weights}
