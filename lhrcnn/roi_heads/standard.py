"""The R-CNN stage: RoI sampling against the ground truth, the box head, its losses (with or
without OHEM) and the post-processed detections (docs/architecture.md#roi-heads).

Every RoI-heads layer follows one contract:

    roi_heads(features, proposals, image_info, targets=None, training=False) -> (detections, losses)

* `features`: the detector's feature dict; `proposals`: the RPN stage's dict (`rois` [B·R, 5],
  `valid` [B·R], `rpn_features`); `image_info` [B, 5] (resized h, w, scale, original h, w).
* Without `targets`: `detections` is the dict of `boxes.postprocess.detect` (padded boxes in
  original-image pixels, scores, classes, num_detections) and `losses` is `{}`.
* With `targets` (gt_boxes [B, M, 4] in resized pixels, gt_classes [B, M], 0 = padding): the
  proposals are sampled and labelled (`boxes.targets.roi_targets`), `detections` is None and
  `losses` is `{"rcnn_cls", "rcnn_box"}` (or whatever keys a subclass returns; the detector sums
  them all).

`StandardRoIHeads` covers the box heads that map (head input, rois [R, 5]) to (class logits
[R, C], box deltas [R, 4C] or [R, 4]): Light-Head, R-FCN and the FPN 2-fc head. Subclasses
change one step: `head_input` (ThunderNet's Spatial Attention Module), `training_losses` and
`outputs_probabilities` (Double-Head).
"""
import dataclasses

import tensorflow as tf

from lhrcnn import losses as loss_lib
from lhrcnn.boxes import postprocess
from lhrcnn.boxes import targets as target_lib
from lhrcnn.keras import keras


@dataclasses.dataclass(frozen=True)
class RoISampling:
    """`boxes.targets.roi_targets` settings: RoIs per image (-1: every proposal and GT, the
    original), the foreground fraction and the IoU thresholds, and whether GT boxes join the
    proposals."""
    batch_size_per_image: int = -1
    fg_fraction: float = 0.25
    fg_threshold: float = 0.5
    bg_threshold_high: float = 0.5
    bg_threshold_low: float = 0.0
    append_gt: bool = True


@dataclasses.dataclass(frozen=True)
class BoxCoding:
    """How box deltas are normalised and decoded: means and stds of the targets, class-specific
    or shared regression, the width convention (`offset` 1.0: the original's +1) and the upper
    bound of decoded dw/dh (`clip_scale`, None: no clamp)."""
    means: tuple = (0.0, 0.0, 0.0, 0.0)
    stds: tuple = (0.1, 0.1, 0.2, 0.2)
    class_specific: bool = True
    offset: float = 1.0
    clip_scale: float = None


@dataclasses.dataclass(frozen=True)
class RCNNLoss:
    """R-CNN loss settings. `ohem_top_k` > 0: online hard example mining keeps the top_k RoIs of
    the replica's batch (the original's `sum_ohem_loss`), or `ohem_top_k_per_image` of each image
    with `per_image`; 0: plain losses over the sampled RoIs. `per_image`: every image normalised
    alone, then averaged (R replicas of B/R images equal one device with B)."""
    ohem_top_k: int = 512
    ohem_top_k_per_image: int = 256
    box_loss_weight: float = 2.0
    per_image: bool = False


@dataclasses.dataclass(frozen=True)
class DetectionSettings:
    """Test-time post-processing: per-class NMS IoU threshold, score threshold (detections
    scoring above it are kept, as `ops.nms`), detections per image."""
    nms_threshold: float = 0.5
    score_threshold: float = 0.0
    max_detections: int = 100


class StandardRoIHeads(keras.layers.Layer):
    """The standard R-CNN stage (see the module docstring for the contract).

    Args:
      box_head: a layer `(head input, rois [R, 5]) -> (class_logits [R, C], box_deltas)`.
      in_features: the feature the head input comes from (a name), or a tuple of names (a
        pyramid's levels: the head input is the dict of those levels).
      num_classes: classes including the background.
      thin_map: optional layer applied to the input feature before the box head (Light-Head's
        large separable convolution).
      sampling, coding, loss, test: RoISampling, BoxCoding, RCNNLoss, DetectionSettings.
      backend: the ops backend for the post-processing's NMS (None, "custom", "tf").
    """

    # The box head's first output is class scores already (probabilities), not logits.
    outputs_probabilities = False

    def __init__(self, box_head, in_features, num_classes, thin_map=None, sampling=RoISampling(),
                 coding=BoxCoding(), loss=RCNNLoss(), test=DetectionSettings(), backend=None, **kwargs):
        super().__init__(**kwargs)
        self.box_head, self.thin_map = box_head, thin_map
        self.in_features = in_features if isinstance(in_features, str) else tuple(in_features)
        self.num_classes = int(num_classes)
        self.sampling, self.coding, self.loss_settings, self.test_settings = sampling, coding, loss, test
        self.backend = backend

    @staticmethod
    def settings_from_config(config):
        """The keyword arguments (sampling, coding, loss, test, backend, num_classes) of an
        experiment's Config: its roi_*, bbox_*, ohem_*, rcnn_* and test_* fields."""
        c = config
        return dict(
            num_classes=c.num_classes,
            sampling=RoISampling(c.roi_batch_size_per_image, c.roi_fg_fraction, c.roi_fg_threshold,
                                 c.roi_bg_threshold_high, c.roi_bg_threshold_low, c.roi_append_gt),
            coding=BoxCoding(tuple(c.bbox_means), tuple(c.bbox_stds), c.class_specific_regression, c.box_offset,
                             c.box_delta_clip),
            loss=RCNNLoss(c.ohem_top_k, max(1, c.ohem_top_k // c.train_batch_per_gpu), c.rcnn_box_loss_weight,
                          per_image=c.loss_normalization == "image"),
            test=DetectionSettings(c.test_nms, c.test_score_threshold, c.test_max_detections),
            backend=c.ops_backend)

    # ------------------------------------------------------------------ steps
    def head_input(self, features, proposals=None, training=None):
        """What the box head reads: the input feature (or the dict of the input levels), through
        the thin map when there is one (`proposals`: the RPN stage's dict, for heads that read
        the RPN's features)."""
        if isinstance(self.in_features, str):
            x = features[self.in_features]
        else:
            x = {name: features[name] for name in self.in_features}
        return self.thin_map(x, training=training) if self.thin_map is not None else x

    def predict_boxes(self, features, rois, proposals=None, training=None):
        """(class outputs [R, C], box deltas) of the box head for `rois` [R, 5]."""
        return self.box_head(self.head_input(features, proposals, training=training), rois, training=training)

    def sample(self, proposals, targets):
        """(rois, labels, box_targets, valid) of the sampled, labelled RoIs (no gradient into rois)."""
        s, b = self.sampling, self.coding
        rois, labels, box_targets, valid = target_lib.roi_targets(
            proposals["rois"], proposals["valid"], targets["gt_boxes"], targets["gt_classes"], self.num_classes,
            batch_size_per_image=s.batch_size_per_image, fg_threshold=s.fg_threshold,
            bg_threshold_high=s.bg_threshold_high, bg_threshold_low=s.bg_threshold_low, fg_fraction=s.fg_fraction,
            append_gt=s.append_gt, means=b.means, stds=b.stds, class_specific=b.class_specific, offset=b.offset)
        return tf.stop_gradient(rois), labels, box_targets, valid

    def per_image_arguments(self, rois, image_info):
        """The losses' `image_index` / `num_images` when losses are normalised per image."""
        if not self.loss_settings.per_image:
            return {}
        return dict(image_index=tf.cast(rois[:, 0], tf.int32), num_images=tf.shape(image_info)[0])

    def training_losses(self, head_input, rois, labels, box_targets, valid, image_info, training=None):
        """{"rcnn_cls", "rcnn_box"} of the box head on the sampled RoIs (OHEM when ohem_top_k > 0)."""
        class_logits, box_deltas = self.box_head(head_input, rois, training=training)
        settings, per_image = self.loss_settings, self.per_image_arguments(rois, image_info)
        common = dict(box_loss_weight=settings.box_loss_weight, class_specific=self.coding.class_specific,
                      **per_image)
        if settings.ohem_top_k > 0:
            top_k = settings.ohem_top_k_per_image if settings.per_image else settings.ohem_top_k
            cls, box = loss_lib.ohem_rcnn_losses(class_logits, box_deltas, labels, box_targets, valid, top_k=top_k,
                                                 **common)
        else:
            cls, box = loss_lib.rcnn_losses(class_logits, box_deltas, labels, box_targets, valid, **common)
        return {"rcnn_cls": cls, "rcnn_box": box}

    def detect(self, class_outputs, box_deltas, rois, valid, image_info):
        """Padded detections in original-image pixels (`boxes.postprocess.detect`)."""
        b, t = self.coding, self.test_settings
        return postprocess.detect(class_outputs, box_deltas, rois, valid, image_info, self.num_classes,
                                  probabilities=self.outputs_probabilities, nms_threshold=t.nms_threshold,
                                  score_threshold=t.score_threshold, max_detections=t.max_detections,
                                  bbox_means=b.means, bbox_stds=b.stds, offset=b.offset, backend=self.backend,
                                  clip_scale=b.clip_scale)

    # ------------------------------------------------------------------ stage
    def call(self, features, proposals, image_info, targets=None, training=False):
        if targets is None:
            rois = proposals["rois"]
            class_outputs, box_deltas = self.predict_boxes(features, rois, proposals, training=training)
            return self.detect(class_outputs, box_deltas, rois, proposals["valid"], image_info), {}
        rois, labels, box_targets, valid = self.sample(proposals, targets)
        head_input = self.head_input(features, proposals, training=training)
        return None, self.training_losses(head_input, rois, labels, box_targets, valid, image_info,
                                          training=training)
