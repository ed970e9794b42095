"""Inference over a tf.data eval set with a fake detector (one trace for all image sizes,
padding entries skipped, COCO conversion, throughput, progress line), and the single-image
preprocessing of the demo (hand values; equal to the eval pipeline's output)."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from lhrcnn.config import load_config
from lhrcnn.evaluation import evaluate, run_inference
from lhrcnn.evaluation.preprocess import decode_image_file, preprocess_image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYNTHETIC = os.path.join(ROOT, "experiments/lhrcnn/light_head_rcnn.xception_star.synthetic")


class FakeDetector(tf.Module):
    """Two detections per image: the whole original image (class 1, 0.9) and its top-left
    quarter (class 2, 0.5), padded to K = 4. Counts its traces."""

    def __init__(self):
        super().__init__()
        self.traces = 0

    def __call__(self, inputs):
        self.traces += 1  # Python side effect: runs once per trace
        info = inputs["image_info"]
        batch = tf.shape(info)[0]
        h, w = info[:, 3], info[:, 4]
        zero = tf.zeros_like(h)
        whole = tf.stack([zero, zero, w, h], axis=-1)
        quarter = tf.stack([zero, zero, w / 2, h / 2], axis=-1)
        boxes = tf.concat([tf.stack([whole, quarter], 1), tf.fill([batch, 2, 4], 7.0)], axis=1)
        scores = tf.tile(tf.constant([[0.9, 0.5, 0.3, 0.3]]), [batch, 1])
        classes = tf.tile(tf.constant([[1, 2, 1, 1]], tf.int32), [batch, 1])
        return {"boxes": boxes, "scores": scores, "classes": classes, "num_detections": tf.fill([batch], 2)}


SIZES = {5: (32, 48), 6: (40, 40), 7: (24, 64)}  # image id -> original (h, w)


def fake_dataset(batch_of_two_with_padding=False):
    def gen():
        for image_id, (h, w) in SIZES.items():
            rh, rw = 2 * h, 2 * w  # "resized" x2 and padded to 32
            images = np.zeros([1, -(-rh // 32) * 32, -(-rw // 32) * 32, 3], np.float32)
            info = np.array([[rh, rw, 2.0, h, w]], np.float32)
            ids = np.array([image_id], np.int64)
            if batch_of_two_with_padding and image_id == 7:  # a last batch padded with id -1
                images, info, ids = (np.concatenate([x, x]) for x in (images, info, ids))
                ids[1] = -1
            yield {"images": images, "image_info": info, "image_id": ids}
    return tf.data.Dataset.from_generator(gen, output_signature={
        "images": tf.TensorSpec([None, None, None, 3], tf.float32),
        "image_info": tf.TensorSpec([None, 5], tf.float32),
        "image_id": tf.TensorSpec([None], tf.int64)})


def test_run_inference_with_a_fake_detector(capsys):
    detector = FakeDetector()
    results, image_ids, stats = run_inference(detector, fake_dataset(batch_of_two_with_padding=True),
                                              [None, 3, 12], num_images=3)
    assert "eval  3/3 (100.0%)" in capsys.readouterr().out  # the progress line at the end
    assert detector.traces == 1  # three image sizes and two batch sizes, one trace
    assert image_ids == [5, 6, 7]
    assert len(results) == 6
    assert results[0] == {"image_id": 5, "category_id": 3, "bbox": [0.0, 0.0, 48.0, 32.0],
                          "score": pytest.approx(0.9)}
    assert results[1] == {"image_id": 5, "category_id": 12, "bbox": [0.0, 0.0, 24.0, 16.0],
                          "score": pytest.approx(0.5)}
    assert results[5]["image_id"] == 7 and results[5]["bbox"] == [0.0, 0.0, 32.0, 12.0]
    assert stats["images"] == 3 and stats["images_per_second"] > 0 and stats["seconds"] >= stats[
        "first_batch_seconds"] > 0


def test_run_inference_then_evaluate_is_perfect_on_matching_ground_truth(tmp_path):
    gt = {"images": [{"id": i, "height": h, "width": w, "file_name": f"{i}.png"} for i, (h, w) in SIZES.items()],
          "categories": [{"id": 3, "name": "circle"}, {"id": 12, "name": "square"}],
          "annotations": []}
    for i, (h, w) in SIZES.items():
        for cat, (bw, bh) in ((3, (w, h)), (12, (w / 2, h / 2))):
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": cat,
                                      "bbox": [0, 0, bw, bh], "area": bw * bh, "iscrowd": 0})
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    results, image_ids, _ = run_inference(FakeDetector(), fake_dataset(), {1: 3, 2: 12}, progress=False)
    stats = evaluate(str(tmp_path / "gt.json"), results, image_ids, verbose=False)
    assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)


def test_preprocess_image_hand_values():
    config = load_config(SYNTHETIC)  # eval 320 / 512, size_divisor 32, BGR mean (102.98, 115.95, 122.77)
    image = np.zeros([48, 64, 3], np.uint8) + np.array([200, 100, 50], np.uint8)  # constant RGB colour
    images, info = preprocess_image(image, config)
    assert images.shape == (1, 320, 448, 3)
    np.testing.assert_allclose(info.numpy(), [[320, 427, 320 / 48, 48, 64]], rtol=1e-6)
    expected = np.array([200 - 122.7717, 100 - 115.9465, 50 - 102.9801], np.float32)  # RGB minus reversed mean
    np.testing.assert_allclose(images[0, :, :427].numpy(), np.broadcast_to(expected, [320, 427, 3]), atol=1e-4)
    assert not np.any(images[0, :, 427:].numpy())  # padding = the mean colour = 0
    with pytest.raises(ValueError, match="RGB"):
        preprocess_image(np.zeros([4, 4]), config)
    # the long side decides: 400 x 320/100 > 512 -> scale 512/400 = 1.28 -> 128 x 512
    images, info = preprocess_image(np.zeros([100, 400, 3], np.uint8), config)
    assert images.shape == (1, 128, 512, 3)
    np.testing.assert_allclose(info.numpy(), [[128, 512, 1.28, 100, 400]], rtol=1e-6)


def test_decode_image_file_errors_name_the_file(tmp_path):
    from PIL import Image
    Image.fromarray(np.full([5, 7, 3], 9, np.uint8)).save(tmp_path / "ok.png")
    assert decode_image_file(tmp_path / "ok.png").shape == (5, 7, 3)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        decode_image_file(tmp_path / "missing.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="junk.jpg"):
        decode_image_file(tmp_path / "junk.jpg")


def test_preprocess_image_equals_the_eval_pipeline(tmp_path):
    """The demo's preprocessing is the eval pipeline's (one image, batch of one)."""
    from lhrcnn.data import coco, pipeline
    from PIL import Image
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, [37, 53, 3], dtype=np.uint8)
    (tmp_path / "images").mkdir()
    Image.fromarray(image).save(tmp_path / "images" / "x.png")
    gt = {"images": [{"id": 4, "height": 37, "width": 53, "file_name": "x.png"}],
          "categories": [{"id": 5, "name": "circle"}],
          "annotations": [{"id": 1, "image_id": 4, "category_id": 5, "bbox": [3, 4, 20, 10], "area": 200,
                           "iscrowd": 0}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    config = load_config(SYNTHETIC)
    dataset = coco.load_coco(str(tmp_path / "gt.json"), str(tmp_path / "images"), class_names=config.class_names)
    batch = next(iter(pipeline.make_dataset(dataset, config, training=False, batch_size=1)))
    images, info = preprocess_image(image, config)
    np.testing.assert_allclose(np.asarray(batch["image_info"]), info.numpy(), rtol=1e-5)
    assert tuple(batch["images"].shape) == tuple(images.shape)
    np.testing.assert_allclose(np.asarray(batch["images"]), images.numpy(), atol=1e-3)
    assert int(np.asarray(batch["image_id"])[0]) == 4
