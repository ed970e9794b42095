"""The region proposal stage: an RPN head on one feature map or on a pyramid's levels, its
anchors, anchor targets and losses, and the proposals (docs/architecture.md#rpn).

`RegionProposalNetwork(features, image_info, targets=None, training=False)` returns
`(proposals, losses)`:

* `proposals`: dict of `rois` [B·R, 5] (batch index, x1, y1, x2, y2 in resized-image pixels,
  R per image, image-major, descending score), `scores` [B·R], `valid` [B·R] bool (padding rows
  False) and `rpn_features` (feature name -> the head's hidden feature on that map, e.g.
  ThunderNet's 256-channel RPN feature that its Spatial Attention Module reads).
* `losses`: `{"rpn_cls", "rpn_box"}` when `targets` (dict of gt_boxes [B, M, 4], gt_classes
  [B, M], 0 = padding) is given, else `{}`. With targets the training proposal counts are used
  (`train_*_top_n`), without them the test ones.
"""
import dataclasses

import tensorflow as tf

from lhrcnn import losses as loss_lib
from lhrcnn.boxes import anchors as anchor_lib
from lhrcnn.boxes import proposals as proposal_lib
from lhrcnn.boxes import targets as target_lib
from lhrcnn.keras import keras


@dataclasses.dataclass(frozen=True)
class AnchorSettings:
    """Anchors of one map (`strides` of one element) or of each pyramid level: level l has base
    anchors of size `base_sizes[l]` with `scales[l]` x `ratios`, on a grid of stride `strides[l]`."""
    base_sizes: tuple
    scales: tuple      # one tuple of scales per level
    ratios: tuple
    strides: tuple


@dataclasses.dataclass(frozen=True)
class AnchorMatching:
    """Anchor targets (`boxes.targets.anchor_targets`) and the RPN losses' settings."""
    positive_overlap: float = 0.7
    negative_overlap: float = 0.3
    batch_size: int = 256
    fg_fraction: float = 0.5
    allowed_border: float = 0
    box_sigma: float = 3.0
    per_image: bool = False  # losses normalised per image, then averaged (replica-count invariant)


@dataclasses.dataclass(frozen=True)
class ProposalSettings:
    """Proposal generation (`boxes.proposals.generate_proposals`) in training and at test time."""
    train_pre_nms_top_n: int = 12000
    train_post_nms_top_n: int = 2000
    test_pre_nms_top_n: int = 6000
    test_post_nms_top_n: int = 1000
    nms_threshold: float = 0.7


def _flatten_levels(maps):
    """Per-level [B, H_l, W_l, K] maps -> [B, Σ H_l·W_l, 1, K], level-major then (y, x): the
    single-map code (proposals, anchor targets, losses) reads it as one map."""
    return tf.concat([tf.reshape(m, [tf.shape(m)[0], -1, 1, m.shape[-1]]) for m in maps], axis=1)


class RegionProposalNetwork(keras.layers.Layer):
    """The RPN stage (see the module docstring for the call contract).

    Args:
      head: an RPN head (`call_with_hidden(x, training) -> (logits, deltas, hidden)`); one head is
        shared by all levels of a pyramid.
      in_features: the feature name the head runs on, or a tuple of names (a pyramid's levels,
        whose outputs are flattened level-major and concatenated).
      anchors: AnchorSettings with one entry per input feature.
      matching, proposals: AnchorMatching and ProposalSettings.
      offset: the box width convention (1.0: the original's +1). clip_scale: upper bound of
        decoded dw/dh (None: no clamp). backend: the ops backend (None, "custom", "tf").
    """

    def __init__(self, head, in_features, anchors, matching=AnchorMatching(), proposals=ProposalSettings(),
                 offset=1.0, clip_scale=None, backend=None, **kwargs):
        super().__init__(**kwargs)
        names = (in_features,) if isinstance(in_features, str) else tuple(in_features)
        if len(anchors.strides) != len(names):
            raise ValueError(f"RPN: {len(names)} input feature(s) {names} but anchors for {len(anchors.strides)} "
                             f"level(s)")
        self.head = head
        self.in_features, self.multi_level = names, not isinstance(in_features, str)
        self.anchor_settings, self.matching, self.proposal_settings = anchors, matching, proposals
        self.offset, self.clip_scale, self.backend = offset, clip_scale, backend
        self.level_base_anchors = [
            anchor_lib.generate_base_anchors(size, anchors.ratios, scales)
            for size, scales in zip(anchors.base_sizes, anchors.scales)]

    @classmethod
    def from_config(cls, config, head, name="rpn"):
        """The RPN of an experiment's Config: its rpn_*, anchor_*, *_rpn_*_top_n and box fields."""
        c = config
        if c.multi_level_rpn:
            anchors = AnchorSettings(tuple(c.anchor_strides), tuple(tuple(s) for s in c.level_anchor_scales),
                                     tuple(c.anchor_ratios), tuple(c.anchor_strides))
        else:
            anchors = AnchorSettings((c.anchor_base_size,), (tuple(c.anchor_scales),), tuple(c.anchor_ratios),
                                     (c.feature_stride,))
        matching = AnchorMatching(c.rpn_positive_overlap, c.rpn_negative_overlap, c.rpn_batch_size,
                                  c.rpn_fg_fraction, c.rpn_allowed_border, c.rpn_box_sigma,
                                  per_image=c.loss_normalization == "image")
        proposals = ProposalSettings(c.train_rpn_pre_nms_top_n, c.train_rpn_post_nms_top_n,
                                     c.test_rpn_pre_nms_top_n, c.test_rpn_post_nms_top_n, c.rpn_nms_threshold)
        return cls(head, c.rpn_feature, anchors, matching, proposals, offset=c.box_offset,
                   clip_scale=c.box_delta_clip, backend=c.ops_backend, name=name)

    # ------------------------------------------------------------------ parts
    def head_outputs(self, features, training=None):
        """(objectness_logits, box_deltas, rpn_features): [B, H, W, 2A] and [B, H, W, 4A] for one
        map; [B, Σ H_l·W_l, 1, 2A] and [..., 4A] over a pyramid (the order of `anchors`);
        rpn_features: feature name -> the head's hidden feature."""
        outputs = [self.head.call_with_hidden(features[name], training=training) for name in self.in_features]
        hidden = {name: out[2] for name, out in zip(self.in_features, outputs)}
        if not self.multi_level:
            return outputs[0][0], outputs[0][1], hidden
        return _flatten_levels([o[0] for o in outputs]), _flatten_levels([o[1] for o in outputs]), hidden

    def anchors(self, features):
        """Anchors [N, 4] of the input map(s), in the head outputs' order: (y, x, a) of one map, or
        level-major then (y, x, a) over a pyramid (each level on its own stride: DetNet's P4-P6
        are all stride 16)."""
        per_level = []
        for name, base, stride in zip(self.in_features, self.level_base_anchors, self.anchor_settings.strides):
            shape = tf.shape(features[name])
            per_level.append(anchor_lib.grid_anchors(base, shape[1], shape[2], stride))
        return per_level[0] if len(per_level) == 1 else tf.concat(per_level, axis=0)

    def proposals(self, logits, deltas, anchors, image_info, training_counts):
        """(rois, scores, valid) from the head outputs (no gradient flows into the proposals)."""
        p = self.proposal_settings
        pre, post = ((p.train_pre_nms_top_n, p.train_post_nms_top_n) if training_counts
                     else (p.test_pre_nms_top_n, p.test_post_nms_top_n))
        return proposal_lib.generate_proposals(
            tf.stop_gradient(logits), tf.stop_gradient(deltas), anchors, image_info, pre, post, p.nms_threshold,
            offset=self.offset, backend=self.backend, clip_scale=self.clip_scale)

    def losses_of(self, logits, deltas, anchors, image_info, targets):
        """{"rpn_cls", "rpn_box"}: anchor targets against the ground truth, then the RPN losses."""
        m = self.matching
        labels, box_targets = target_lib.anchor_targets(
            anchors, targets["gt_boxes"], targets["gt_classes"], image_info, positive_overlap=m.positive_overlap,
            negative_overlap=m.negative_overlap, batch_size=m.batch_size, fg_fraction=m.fg_fraction,
            allowed_border=m.allowed_border, offset=self.offset)
        cls, box = loss_lib.rpn_losses(logits, deltas, labels, box_targets, sigma=m.box_sigma, per_image=m.per_image)
        return {"rpn_cls": cls, "rpn_box": box}

    # ------------------------------------------------------------------ stage
    def call(self, features, image_info, targets=None, training=False):
        logits, deltas, hidden = self.head_outputs(features, training=training)
        anchors = self.anchors(features)
        # targets before proposals: the targets' random subsampling then draws what it always drew
        losses = {} if targets is None else self.losses_of(logits, deltas, anchors, image_info, targets)
        rois, scores, valid = self.proposals(logits, deltas, anchors, image_info, training_counts=targets is not None)
        return {"rois": rois, "scores": scores, "valid": valid, "rpn_features": hidden}, losses
