"""The two-stage detector: backbone -> RPN -> proposals -> (thin feature map) -> R-CNN head, with
in-graph targets and losses for training and post-processed detections for inference
(shared/DESIGN.md §3). Built from a Config by an experiment's network_desp.py."""
import os

import numpy as np
import tensorflow as tf

from lhrcnn import losses
from lhrcnn.boxes import anchors as anchor_lib
from lhrcnn.boxes import postprocess, proposals, targets
from lhrcnn.config import load_config, load_network_module
from lhrcnn.keras import keras


def _flatten_levels(maps):
    """Per-level [B, H_l, W_l, K] maps -> [B, Σ H_l·W_l, 1, K], level-major then (y, x): the
    single-map code (proposals, anchor targets, losses) reads it as one map."""
    return tf.concat([tf.reshape(m, [tf.shape(m)[0], -1, 1, m.shape[-1]]) for m in maps], axis=1)


class RPN(keras.layers.Layer):
    """features dict -> (objectness_logits [B, H, W, 2A], box_deltas [B, H, W, 4A]).

    With a tuple of feature names (an FPN's levels) the head is shared over the levels and the
    outputs are every level's, flattened and concatenated: [B, Σ H_l·W_l, 1, 2A] and [..., 4A],
    in the order of `TwoStageDetector.anchors`."""

    def __init__(self, head, feature_name, **kwargs):
        super().__init__(**kwargs)
        self.head, self.feature_name = head, feature_name

    @property
    def multi_level(self):
        return isinstance(self.feature_name, (tuple, list))

    def call(self, features, training=None):
        if not self.multi_level:
            return self.head(features[self.feature_name], training=training)
        outputs = [self.head(features[name], training=training) for name in self.feature_name]
        return _flatten_levels([o[0] for o in outputs]), _flatten_levels([o[1] for o in outputs])

    def with_hidden(self, features, training=None):
        """(logits, deltas, hidden): `hidden` is the head's intermediate feature when the head
        exposes one (`call_with_hidden`, e.g. ThunderNet's compressed RPN, whose feature feeds
        the Spatial Attention Module), else None."""
        if hasattr(self.head, "call_with_hidden") and not self.multi_level:
            x = features[self.feature_name]
            return self.head.call_with_hidden(x, training=training)
        logits, deltas = self(features, training=training)
        return logits, deltas, None


class RoIHead(keras.layers.Layer):
    """(features dict, rois [R, 5]) -> (class_logits [R, num_classes], box_deltas [R, 4·classes or 4]).
    Applies the neck (the thin feature map) when there is one, then the R-CNN subnet."""

    def __init__(self, head, feature_name, neck=None, **kwargs):
        super().__init__(**kwargs)
        self.head, self.feature_name, self.neck = head, feature_name, neck

    def head_input(self, features, training=None):
        if getattr(self.neck, "takes_feature_dict", False):  # e.g. ThunderNet's SAM: CEM and RPN features
            return self.neck(features, training=training)
        x = features[self.feature_name]
        return self.neck(x, training=training) if self.neck is not None else x

    def call(self, features, rois, training=None):
        if getattr(self.head, "takes_feature_dict", False):  # FPN heads: pool from several levels
            return self.head(features, rois, training=training)
        return self.head(self.head_input(features, training=training), rois)


class TwoStageDetector(keras.Model):
    """Light-Head R-CNN / R-FCN style detector.

    Parts, each callable alone: `backbone(images)` -> feature dict; `rpn(features)`;
    `roi_head(features, rois)`. The whole model: `detector({"images": [B, H, W, 3],
    "image_info": [B, 5]}, training=False)` -> dict of padded detections (see
    boxes.postprocess.detect). `compute_losses(batch)` gives the training losses.
    """

    def __init__(self, config, backbone, rpn_head, roi_head, neck=None, pre_rpn_neck=None, name="detector",
                 **kwargs):
        """`pre_rpn_neck` (optional): a layer mapping the backbone's feature dict to extra named
        features that the RPN and the R-CNN head may use (ThunderNet's CEM adds "CEM"). When the
        RPN head exposes its hidden feature, it is added as "RPN"."""
        super().__init__(name=name, **kwargs)
        self.config = config
        self.backbone = backbone
        self.pre_rpn_neck = pre_rpn_neck
        self.rpn = RPN(rpn_head, config.rpn_feature, name="rpn")
        self.roi_head = RoIHead(roi_head, config.head_feature, neck=neck, name="roi_head")
        if self.rpn.multi_level:  # one base set per level, centred on the level's cells
            self.level_base_anchors = [
                anchor_lib.generate_base_anchors(stride, config.anchor_ratios, scales)
                for stride, scales in zip(config.anchor_strides, config.level_anchor_scales)]
        else:
            self.base_anchors = anchor_lib.generate_base_anchors(config.anchor_base_size, config.anchor_ratios,
                                                                 config.anchor_scales)

    # ------------------------------------------------------------------ shared stages
    jit_compile_backbone = False  # set (e.g. by the Trainer's `jit_compile`) to run the backbone through XLA

    def _compiled_backbone(self, training):
        cache = self.__dict__.setdefault("_xla_backbones", {})
        if bool(training) not in cache:
            cache[bool(training)] = tf.function(lambda images: self.backbone(images, training=bool(training)),
                                                jit_compile=True)
        return cache[bool(training)]

    def features(self, images, training=False):
        """The backbone's features as float32 (whatever dtype the backbone computes in)."""
        if self.jit_compile_backbone:
            features = self._compiled_backbone(training)(images)
        else:
            features = self.backbone(images, training=training)
        return {k: v if v.dtype == tf.float32 else tf.cast(v, tf.float32) for k, v in features.items()}

    def rpn_stage(self, features, training=False):
        """(features with the pre-RPN neck's and the RPN's hidden features added, RPN logits,
        RPN deltas)."""
        if self.pre_rpn_neck is not None:
            features = {**features, **self.pre_rpn_neck(features, training=training)}
        logits, deltas, hidden = self.rpn.with_hidden(features, training=training)
        if hidden is not None:
            features = {**features, "RPN": hidden}
        return features, logits, deltas

    def anchors(self, features):
        """Anchors [N, 4] of the RPN's feature map(s) (features: the feature dict), in the RPN
        outputs' order: (y, x, a) of one map, or level-major then (y, x, a) over an FPN's levels
        (each level's anchors on its own true stride: DetNet's P4-P6 are all stride 16)."""
        c = self.config
        if not self.rpn.multi_level:
            shape = tf.shape(features[c.rpn_feature])
            return anchor_lib.grid_anchors(self.base_anchors, shape[1], shape[2], c.feature_stride)
        per_level = []
        for name, base, stride in zip(c.rpn_feature, self.level_base_anchors, c.anchor_strides):
            shape = tf.shape(features[name])
            per_level.append(anchor_lib.grid_anchors(base, shape[1], shape[2], stride))
        return tf.concat(per_level, axis=0)

    def _proposals(self, features, rpn_logits, rpn_deltas, image_info, training):
        c = self.config
        pre, post = ((c.train_rpn_pre_nms_top_n, c.train_rpn_post_nms_top_n) if training
                     else (c.test_rpn_pre_nms_top_n, c.test_rpn_post_nms_top_n))
        return proposals.generate_proposals(
            tf.stop_gradient(rpn_logits), tf.stop_gradient(rpn_deltas), self.anchors(features),
            image_info, pre, post, c.rpn_nms_threshold, offset=c.box_offset, backend=c.ops_backend,
            clip_scale=c.box_delta_clip)

    # ------------------------------------------------------------------ inference
    def call(self, inputs, training=False):
        images, image_info = inputs["images"], inputs["image_info"]
        features, rpn_logits, rpn_deltas = self.rpn_stage(self.features(images, training=training), training)
        rois, _, valid = self._proposals(features, rpn_logits, rpn_deltas, image_info, training=False)
        class_logits, box_deltas = self.roi_head(features, rois, training=training)
        c = self.config
        return postprocess.detect(class_logits, box_deltas, rois, valid, image_info, c.num_classes,
                                  probabilities=getattr(self.roi_head.head, "outputs_probabilities", False),
                                  nms_threshold=c.test_nms, score_threshold=c.test_score_threshold,
                                  max_detections=c.test_max_detections, bbox_means=c.bbox_means,
                                  bbox_stds=c.bbox_stds, offset=c.box_offset, backend=c.ops_backend,
                                  clip_scale=c.box_delta_clip)

    # ------------------------------------------------------------------ training
    def compute_losses(self, batch, training=True):
        """Losses of one replica's batch (dict with images [B, H, W, 3], image_info [B, 5],
        gt_boxes [B, M, 4] in resized pixels, gt_classes [B, M] int32, 0 = padding).
        Returns a dict: rpn_cls, rpn_box, rcnn_cls, rcnn_box, total (all scalars)."""
        c = self.config
        images, image_info = batch["images"], batch["image_info"]
        gt_boxes, gt_classes = batch["gt_boxes"], batch["gt_classes"]
        features, rpn_logits, rpn_deltas = self.rpn_stage(self.features(images, training=training), training)
        anchors = self.anchors(features)
        labels, box_targets = targets.anchor_targets(
            anchors, gt_boxes, gt_classes, image_info, positive_overlap=c.rpn_positive_overlap,
            negative_overlap=c.rpn_negative_overlap, batch_size=c.rpn_batch_size, fg_fraction=c.rpn_fg_fraction,
            allowed_border=c.rpn_allowed_border, offset=c.box_offset)
        per_image = c.loss_normalization == "image"
        rpn_cls, rpn_box = losses.rpn_losses(rpn_logits, rpn_deltas, labels, box_targets, sigma=c.rpn_box_sigma,
                                             per_image=per_image)
        rois, _, valid = self._proposals(features, rpn_logits, rpn_deltas, image_info, training=True)
        rois, roi_labels, roi_box_targets, sample_valid = targets.roi_targets(
            rois, valid, gt_boxes, gt_classes, c.num_classes, batch_size_per_image=c.roi_batch_size_per_image,
            fg_threshold=c.roi_fg_threshold, bg_threshold_high=c.roi_bg_threshold_high,
            bg_threshold_low=c.roi_bg_threshold_low, fg_fraction=c.roi_fg_fraction, append_gt=c.roi_append_gt,
            means=c.bbox_means, stds=c.bbox_stds, class_specific=c.class_specific_regression, offset=c.box_offset)
        rois = tf.stop_gradient(rois)
        per_image_args = dict(image_index=tf.cast(rois[:, 0], tf.int32), num_images=tf.shape(images)[0]) \
            if per_image else {}
        if hasattr(self.roi_head.head, "outputs"):  # Double-Head: every head's outputs have a loss
            rcnn_cls, rcnn_box = losses.double_head_losses(
                self.roi_head.head.outputs(features, rois, training=training), roi_labels, roi_box_targets,
                sample_valid, weights=c.double_head_loss_weights, class_specific=c.class_specific_regression,
                **per_image_args)
            out = {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "rcnn_cls": rcnn_cls, "rcnn_box": rcnn_box}
            out["total"] = tf.add_n(list(out.values()))
            return out
        class_logits, box_deltas = self.roi_head(features, rois, training=training)
        # "image": every image's losses normalised alone (OHEM keeps ohem_top_k / images per image),
        # then averaged: R replicas of B/R images then equal one device with B images.
        if c.ohem_top_k > 0:
            top_k = max(1, c.ohem_top_k // c.train_batch_per_gpu) if per_image else c.ohem_top_k
            rcnn_cls, rcnn_box = losses.ohem_rcnn_losses(
                class_logits, box_deltas, roi_labels, roi_box_targets, sample_valid, top_k=top_k,
                box_loss_weight=c.rcnn_box_loss_weight, class_specific=c.class_specific_regression,
                **per_image_args)
        else:
            rcnn_cls, rcnn_box = losses.rcnn_losses(
                class_logits, box_deltas, roi_labels, roi_box_targets, sample_valid,
                box_loss_weight=c.rcnn_box_loss_weight, class_specific=c.class_specific_regression,
                **per_image_args)
        out = {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "rcnn_cls": rcnn_cls, "rcnn_box": rcnn_box}
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
    network = load_network_module(experiment_dir)
    if not hasattr(network, "build_network"):
        raise ValueError(f"{experiment_dir}/network_desp.py must define build_network(config)")
    detector = network.build_network(config)
    return detector.build_with_dummy_input()


def load_detector(experiment_dir, checkpoint=None, **config_overrides):
    """The experiment's detector with weights from `checkpoint` (a checkpoint prefix or a folder;
    default: the latest checkpoint in the experiment's output model_dump/)."""
    detector = build_detector(experiment_dir, **config_overrides)
    if checkpoint is None:
        checkpoint = os.path.join(detector.config.output_dir(experiment_dir), "model_dump")
    path = tf.train.latest_checkpoint(checkpoint) if os.path.isdir(checkpoint) else checkpoint
    if not path or not tf.io.gfile.exists(path + ".index"):
        raise FileNotFoundError(f"no checkpoint at {checkpoint}")
    try:
        status = tf.train.Checkpoint(model=detector).read(path)  # read(): no save counter involved
        status.assert_existing_objects_matched()  # every model variable must come from the checkpoint
    except (AssertionError, ValueError) as e:
        raise ValueError(f"checkpoint {path} does not match the model of {experiment_dir}: {str(e)[:500]}") from None
    status.expect_partial()  # optimizer slots etc. of a training checkpoint are not needed here
    return detector


def count_parameters(model, trainable_only=False):
    variables = model.trainable_variables if trainable_only else model.variables
    return int(sum(np.prod(v.shape) for v in variables))
