"""Adding parts without touching the library: a backbone and an RoI head defined here, registered
by name, selected by config overrides, trained for three steps and evaluated through the public
entry points (the code of docs/architecture.md#adding-a-part)."""
import os

import numpy as np
import pytest
import tensorflow as tf

from lhrcnn import ops
from lhrcnn.keras import keras
from lhrcnn.registry import BACKBONES, ROI_HEADS
from lhrcnn.roi_heads import StandardRoIHeads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "experiments/lhrcnn/light_head_rcnn.xception_star.synthetic")


# --- docs/architecture.md#adding-a-part: a backbone ------------------------------------------
def tiny_convnet(channels=16):
    """images -> {"C4": stride-16 features}: four 3x3 stride-2 convolutions with ReLU."""
    images = keras.Input([None, None, 3])
    x = images
    for i in range(4):
        x = keras.layers.Conv2D(channels, 3, strides=2, padding="same", activation="relu", name=f"conv{i + 1}")(x)
    model = keras.Model(images, {"C4": x}, name="tiny_convnet")
    model.feature_strides = {"C4": 16}
    return model


@BACKBONES.register("tiny_convnet")
def build_tiny_convnet(config):
    return tiny_convnet(**config.backbone_options)


# --- docs/architecture.md#adding-a-part: an RoI head -----------------------------------------
class RoIAlignBoxHead(keras.layers.Layer):
    """(feature map, rois [R, 5]) -> (class logits [R, C], box deltas [R, 4C]): RoIAlign 4x4,
    flatten, one fc layer, then the classifier and the regressor."""

    def __init__(self, num_classes, spatial_scale, fc_channels=64, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.spatial_scale = num_classes, spatial_scale
        self.fc = keras.layers.Dense(fc_channels, activation="relu", name="fc")
        self.cls = keras.layers.Dense(num_classes, name="cls")
        self.bbox = keras.layers.Dense(4 * num_classes, name="bbox")

    def call(self, features, rois):
        pooled = ops.roi_align(features, rois, 4, self.spatial_scale, sampling_ratio=2, pooling="avg", aligned=True)
        x = self.fc(tf.reshape(pooled, [-1, 4 * 4 * features.shape[-1]]))
        return self.cls(x), self.bbox(x)


@ROI_HEADS.register("roi_align_fc")
def build_roi_align_fc(config, feature_strides):
    head = RoIAlignBoxHead(config.num_classes, 1.0 / feature_strides[config.head_feature])
    return StandardRoIHeads(head, config.head_feature, name="roi_head", **StandardRoIHeads.settings_from_config(config))


OVERRIDES = dict(backbone="tiny_convnet", backbone_options={"channels": 16}, head="roi_align_fc",
                 rpn_feature="C4", head_feature="C4", rpn_channels=32, gradient_multipliers={},
                 train_rpn_pre_nms_top_n=300, train_rpn_post_nms_top_n=64, test_rpn_pre_nms_top_n=300,
                 test_rpn_post_nms_top_n=32, ohem_top_k=32, precise_bn_batches=0, warmup_iters=1,
                 image_short_size=128, image_max_size=160, eval_image_short_size=128, eval_image_max_size=160,
                 cache_decoded_images=False)
# --- end of the docs' code ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from lhrcnn.data.synthetic import write_dataset
    root = tmp_path_factory.mktemp("extension")
    annotations = write_dataset(str(root / "data"), num_images=6, seed=21, workers=1)
    return dict(train_annotations=annotations, train_images=str(root / "data/images"),
                eval_annotations=annotations, eval_images=str(root / "data/images")), root


def test_registered_parts_train_and_evaluate_through_the_public_entry_points(tiny_data):
    from lhrcnn.config import load_config
    from lhrcnn.data.coco import load_coco
    from lhrcnn.data.pipeline import make_dataset
    from lhrcnn.detector import load_detector
    from lhrcnn.evaluation import coco_eval
    from lhrcnn.train.trainer import Trainer

    data, root = tiny_data
    overrides = {**OVERRIDES, **data}
    trainer = Trainer(BASE, output_dir=str(root / "out"), total_steps=3, checkpoint_every=1000,
                      log_every_seconds=1000, **overrides)
    detector = trainer.detector
    assert detector.backbone.name == "tiny_convnet" and isinstance(detector.roi_heads.box_head, RoIAlignBoxHead)
    before = detector.roi_heads.box_head.fc.kernel.numpy().copy()
    result = trainer.train()
    assert result["steps"] == 3 and np.isfinite(result["losses"]["total"])
    assert set(result["losses"]) == {"rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box", "total"}
    assert not np.array_equal(detector.roi_heads.box_head.fc.kernel.numpy(), before)  # the new head trained

    config = load_config(BASE, **overrides)
    trained = load_detector(BASE, checkpoint=result["checkpoint"], **overrides)
    np.testing.assert_array_equal(trained.roi_heads.box_head.fc.kernel.numpy(),
                                  detector.roi_heads.box_head.fc.kernel.numpy())
    dataset = load_coco(data["eval_annotations"], data["eval_images"], class_names=config.class_names)
    results, image_ids, _ = coco_eval.run_inference(trained, make_dataset(dataset, config, training=False,
                                                                          batch_size=2),
                                                    dataset.category_ids, progress=False)
    assert sorted(image_ids) == [r.image_id for r in dataset.records]
    stats = coco_eval.evaluate(dataset.annotation_file, results, image_ids=image_ids, verbose=False)
    assert 0.0 <= stats["AP"] <= 1.0 and "AP50" in stats


def test_unknown_names_name_the_closest_registered_part():
    from lhrcnn.builders import build_default_detector
    from lhrcnn.config import load_config
    with pytest.raises(ValueError, match="unknown head 'roi_align_f'; did you mean 'roi_align_fc'"):
        build_default_detector(load_config(BASE, **{**OVERRIDES, "head": "roi_align_f"}))
    with pytest.raises(ValueError, match="already registered"):
        ROI_HEADS.register("roi_align_fc", lambda config, strides: None)
