"""The two-stage detector: backbone -> optional neck -> RPN stage -> RoI-heads stage
(docs/architecture.md). The detector only wires its parts; each stage owns its anchors or
sampling, its targets and its losses (`lhrcnn.rpn`, `lhrcnn.roi_heads`). Experiments build it in
their network_desp.py, by default through `lhrcnn.builders.build_default_detector`."""
import os

import numpy as np
import tensorflow as tf

from lhrcnn.config import load_config, load_network_module
from lhrcnn.keras import keras


class TwoStageDetector(keras.Model):
    """A two-stage detector.

    Parts: `backbone(images)` -> feature dict (with `feature_strides`); `neck(features)` -> extra
    named features (optional: a pyramid, ThunderNet's CEM); `rpn(features, image_info,
    targets=None)` -> (proposals, losses); `roi_heads(features, proposals, image_info,
    targets=None)` -> (detections, losses).

    `detector({"images": [B, H, W, 3], "image_info": [B, 5]}, training=False)` -> dict of padded
    detections (see boxes.postprocess.detect). `compute_losses(batch)` -> the stages' losses and
    their sum "total".

    Args:
      config: the experiment's Config, kept for the code around the model (trainer, export,
        evaluation); the detector reads only `size_divisor` (for `build_with_dummy_input`).
    """

    def __init__(self, config, backbone, rpn, roi_heads, neck=None, name="detector", **kwargs):
        super().__init__(name=name, **kwargs)
        self.config = config
        self.backbone, self.neck, self.rpn, self.roi_heads = backbone, neck, rpn, roi_heads

    jit_compile_backbone = False  # set (e.g. by the Trainer's `jit_compile`) to run the backbone through XLA

    def _compiled_backbone(self, training):
        cache = self.__dict__.setdefault("_xla_backbones", {})
        if bool(training) not in cache:
            cache[bool(training)] = tf.function(lambda images: self.backbone(images, training=bool(training)),
                                                jit_compile=True, autograph=False)
        return cache[bool(training)]

    def features(self, images, training=False):
        """The backbone's features as float32 (whatever dtype the backbone computes in), with the
        neck's features added."""
        if self.jit_compile_backbone:
            features = self._compiled_backbone(training)(images)
        else:
            features = self.backbone(images, training=training)
        features = {k: v if v.dtype == tf.float32 else tf.cast(v, tf.float32) for k, v in features.items()}
        if self.neck is not None:
            features = {**features, **self.neck(features, training=training)}
        return features

    def call(self, inputs, training=False):
        image_info = inputs["image_info"]
        features = self.features(inputs["images"], training=training)
        proposals, _ = self.rpn(features, image_info, training=training)
        detections, _ = self.roi_heads(features, proposals, image_info, training=training)
        return detections

    def compute_losses(self, batch, training=True):
        """Losses of one replica's batch (dict with images [B, H, W, 3], image_info [B, 5],
        gt_boxes [B, M, 4] in resized pixels, gt_classes [B, M] int32, 0 = padding): every loss
        the stages return (e.g. rpn_cls, rpn_box, rcnn_cls, rcnn_box) and their sum "total"."""
        image_info = batch["image_info"]
        targets = {"gt_boxes": batch["gt_boxes"], "gt_classes": batch["gt_classes"]}
        features = self.features(batch["images"], training=training)
        proposals, rpn_losses = self.rpn(features, image_info, targets=targets, training=training)
        _, roi_losses = self.roi_heads(features, proposals, image_info, targets=targets, training=training)
        shared = sorted(set(rpn_losses) & set(roi_losses))
        if shared or "total" in rpn_losses or "total" in roi_losses:
            raise ValueError(f"the RPN and RoI-heads stages return the same loss names {shared or ['total']}")
        out = {**rpn_losses, **roi_losses}
        out["total"] = tf.add_n(list(out.values()))
        return out

    def build_with_dummy_input(self, height=None, width=None):
        """Creates all variables by running inference once on a zero image."""
        height = height or 2 * self.config.size_divisor
        width = width or 2 * self.config.size_divisor
        info = tf.constant([[height, width, 1.0, height, width]], tf.float32)
        self({"images": tf.zeros([1, height, width, 3]), "image_info": info})
        return self


def build_detector(experiment_dir, **config_overrides):
    """The experiment's detector with freshly initialised weights (variables created)."""
    config = load_config(experiment_dir, **config_overrides)
    build_network = vars(load_network_module(experiment_dir)).get("build_network")
    if build_network is None:
        raise ValueError(f"{experiment_dir}/network_desp.py must define build_network(config)")
    return build_network(config).build_with_dummy_input()


# Checkpoints written before the stages owned their parts hold the same variables under other
# object paths: the neck under `pre_rpn_neck`, the R-CNN stage as `roi_head` with the box head as
# `head` and the thin map (large separable conv, SAM) as `neck`.
_LEGACY_MARKERS = ("model/roi_head/", "model/pre_rpn_neck/")


def uses_legacy_layout(prefix):
    """True when the TF2 checkpoint `prefix` has the earlier object layout (see legacy_view)."""
    return any(name.startswith(_LEGACY_MARKERS) for name, _ in tf.train.list_variables(prefix))


def legacy_view(detector):
    """A trackable over the detector's parts with the earlier layout's object paths (backbone,
    pre_rpn_neck, rpn/head, roi_head/{head, neck}): `tf.train.Checkpoint(model=legacy_view(d))`
    reads such a checkpoint into `d` (optimizer slots included when the optimizer is passed too)."""
    view = tf.Module(name="legacy_detector")
    view.backbone = detector.backbone
    if detector.neck is not None:
        view.pre_rpn_neck = detector.neck
    view.rpn = tf.Module(name="legacy_rpn")
    view.rpn.head = detector.rpn.head
    view.roi_head = tf.Module(name="legacy_roi_head")
    view.roi_head.head = detector.roi_heads.box_head
    if detector.roi_heads.thin_map is not None:
        view.roi_head.neck = detector.roi_heads.thin_map
    return view


def checkpoint_model(detector, prefix):
    """The object to restore the checkpoint `prefix` into as `model`: the detector, or its
    legacy_view when the checkpoint has the earlier layout."""
    return legacy_view(detector) if uses_legacy_layout(prefix) else detector


def load_detector(experiment_dir, checkpoint=None, **config_overrides):
    """The experiment's detector with weights from `checkpoint` (a checkpoint prefix or a folder;
    default: the latest checkpoint in the experiment's output model_dump/)."""
    detector = build_detector(experiment_dir, **config_overrides)
    from lhrcnn.paths import experiment_output_dir, resolve_checkpoint
    if checkpoint is None:
        checkpoint = os.path.join(experiment_output_dir(detector.config, experiment_dir), "model_dump")
    path = resolve_checkpoint(checkpoint)  # FileNotFoundError naming the path when there is none
    try:
        # read(): no save counter involved
        status = tf.train.Checkpoint(model=checkpoint_model(detector, path)).read(path)
        status.assert_existing_objects_matched()  # every model variable must come from the checkpoint
    except (AssertionError, ValueError) as e:
        raise ValueError(f"checkpoint {path} does not match the model of {experiment_dir}: {str(e)[:500]}") from None
    status.expect_partial()  # optimizer slots etc. of a training checkpoint are not needed here
    return detector


def count_parameters(model, trainable_only=False):
    variables = model.trainable_variables if trainable_only else model.variables
    return int(sum(np.prod(v.shape) for v in variables))
