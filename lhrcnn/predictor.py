"""Detections on images, from an experiment's checkpoint (in process) or from an exported SavedModel:

    from lhrcnn import Predictor

    predictor = Predictor("experiments/lhrcnn/thundernet.snet146.synthetic",
                          checkpoint="output/lhrcnn/thundernet.snet146.synthetic/model_dump")
    detections = predictor("photo.jpg")        # a path, encoded bytes or a uint8 [H, W, 3] array
    detections.boxes                           # [K, 4] x1, y1, x2, y2 in photo.jpg's pixels
    drawn = predictor.draw("photo.jpg", detections)   # uint8 [H, W, 3]

    served = Predictor.from_saved_model("models/lhrcnn")   # the newest version folder, or one version

Both read images the same way: files and bytes are decoded by lhrcnn.data.preprocess.decode_image
(JPEG, PNG, GIF's first frame, BMP, WebP; grey and RGBA converted to RGB). The in-process predictor
then applies the eval preprocessing (lhrcnn.data.preprocess.preprocess_for_eval) and runs the
detector; the SavedModel predictor sends the uint8 pixels to the export's `serving_default`
signature, whose graph applies the same preprocessing, and maps its category ids back to class
indices through the export's assets.extra/export_info.json. A list of images gives a list of
Detections, each image run on its own (images of any sizes).
"""
import dataclasses
import json
import os

import numpy as np

from lhrcnn.config import DEFAULT_MAX_IMAGE_PIXELS
from lhrcnn.errors import MissingPathError

__all__ = ["Detections", "Predictor", "read_image"]


@dataclasses.dataclass(frozen=True)
class Detections:
    """The detections of one image, best score first.

    boxes: float32 [K, 4], x1, y1, x2, y2 in the original image's pixels.
    scores: float32 [K].
    class_ids: int32 [K], the detector's class index (1..num_classes - 1; 0 is the background).
    class_names: K names, class_names[i] the name of class_ids[i].
    image_size: (height, width) of the image the detections are on.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    class_names: tuple
    image_size: tuple

    def __len__(self):
        return int(self.scores.shape[0])

    def to_list(self):
        """One dict per detection: "class" (name), "class_index", "score" and "box" ([x1, y1, x2,
        y2] pixels), the entries of `lhrcnn predict`'s JSON files and what
        lhrcnn.visualize.draw_detections draws."""
        return [{"class": name, "class_index": int(index), "score": float(score),
                 "box": [float(v) for v in box]}
                for box, score, index, name in zip(self.boxes, self.scores, self.class_ids, self.class_names)]


# ----------------------------------------------------------------------------- images


def _decode(raw, what, max_pixels, plural=False):
    """decode_image of the bytes `raw`; ValueError starting with `what` (e.g. "image x.png") when
    they are not a readable image or would decode to more than max_pixels pixels."""
    import tensorflow as tf

    from lhrcnn.data import preprocess
    raw = tf.constant(raw, tf.string)
    if not bool(preprocess.is_supported_image(raw)):
        raise ValueError(f"{what} {'are' if plural else 'is'} not a JPEG, PNG, GIF, BMP or WebP image")
    try:
        frames, height, width = (int(v) for v in preprocess.decoded_size(raw))
        if frames * height * width > max_pixels:
            raise ValueError(f"{what} would decode to {frames} frame(s) of {height}x{width} pixels (by its header), "
                             f"more than the {max_pixels} pixels allowed (max_image_pixels); it is not decoded")
        return preprocess.decode_image(raw, max_pixels=None).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{what} cannot be decoded ({reason})") from None


def read_image(image, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """The uint8 [H, W, 3] RGB pixels of `image`:

      * a path (str or os.PathLike): the file, decoded; FileNotFoundError when it does not exist,
        ValueError naming it when it is not a readable image;
      * bytes (or bytearray, memoryview): an encoded image, decoded; ValueError when it is not one;
      * a NumPy array: returned as it is when it is uint8 [H, W, 3] with H, W >= 1, else ValueError
        naming its dtype and shape.

    Encoded images that would decode to more than max_pixels pixels (frames x height x width,
    by their header) raise ValueError without being decoded. TypeError for anything else.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise ValueError(f"an image array must be uint8 [H, W, 3] (RGB, H and W >= 1), got {image.dtype} "
                             f"{list(image.shape)}")
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        raw = bytes(image)
        return _decode(raw, f"the image bytes ({len(raw)} bytes)", max_pixels, plural=True)
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise MissingPathError(f"image {path} does not exist")
        with open(path, "rb") as f:
            raw = f.read()
        return _decode(raw, f"image {path}", max_pixels)
    raise TypeError(f"an image is a path, encoded bytes or a uint8 [H, W, 3] array, got {type(image).__name__}")


# ----------------------------------------------------------------------------- SavedModel


def saved_model_version(path):
    """The SavedModel folder `path` names: `path` itself when it holds saved_model.pb, else its
    largest numbered version folder (a TF Serving model base folder). MissingPathError otherwise."""
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    if not os.path.isdir(path):
        raise MissingPathError(f"SavedModel {path} does not exist")
    versions = sorted((int(n) for n in os.listdir(path)
                       if n.isdigit() and os.path.isfile(os.path.join(path, n, "saved_model.pb"))), reverse=True)
    if not versions:
        raise MissingPathError(f"no SavedModel in {path}: it has no saved_model.pb and no version folder "
                               f"(<number>/saved_model.pb); pass an export of `lhrcnn export`")
    return os.path.join(path, str(versions[0]))


def _export_details(version_dir):
    """(class names per class index, {category id: class index}, baked score threshold, the
    max_image_pixels of its serve_bytes) of an export, from assets.extra/export_info.json, else
    from label_map.json (category id -> name)."""
    from lhrcnn.export import saved_model, warmup
    extra = os.path.join(version_dir, warmup.WARMUP_DIR)
    info_file = os.path.join(extra, saved_model.INFO_FILE)
    if os.path.isfile(info_file):
        with open(info_file) as f:
            info = json.load(f)
        names = tuple(info["class_names"])
        ids = info.get("category_ids") or list(range(len(names)))
        return (names, {int(c): i for i, c in enumerate(ids) if i > 0}, float(info.get("score_threshold", 0.0)),
                int(info.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)))
    label_file = os.path.join(extra, saved_model.LABEL_MAP_FILE)
    if os.path.isfile(label_file):  # no class indices: the category ids stand in for them
        with open(label_file) as f:
            labels = {int(k): str(v) for k, v in json.load(f).items()}
        names = ["background"] + [f"class {i}" for i in range(1, max(labels, default=0) + 1)]
        for i, name in labels.items():
            names[i] = name
        return tuple(names), {i: i for i in labels}, 0.0, DEFAULT_MAX_IMAGE_PIXELS
    raise MissingPathError(f"{version_dir} has neither {os.path.join(warmup.WARMUP_DIR, saved_model.INFO_FILE)} nor "
                           f"{saved_model.LABEL_MAP_FILE}: it is not an export of `lhrcnn export`")


# ----------------------------------------------------------------------------- predictor


class Predictor:
    """A detector ready for images: `predictor(image)` -> Detections, `predictor([a, b])` -> a list.

    Predictor(experiment, checkpoint=None, score_threshold=None, **overrides): the experiment's
    detector (config overrides as in lhrcnn.load_detector, e.g. ops_backend="tf") with the weights
    of `checkpoint` (a prefix or a folder; default: the latest one in the experiment's
    output/<user>/<experiment>/model_dump/). Predictor.from_saved_model(path) reads an export
    instead; Predictor.from_edge_model(path) a LiteRT or ONNX export; Predictor.from_detector(detector)
    wraps a detector already built.

    score_threshold: detections scoring above this are kept (score > S, the rule of the
    detector's own post-processing and of the original); default: the config's
    test_score_threshold (for a SavedModel, the one baked into the export; a lower value cannot
    bring back what the export dropped).

    Encoded images that would decode to more than `max_image_pixels` pixels (the config's; for
    a SavedModel the export's) are refused with ValueError before they are decoded.
    """

    def __init__(self, experiment, checkpoint=None, *, score_threshold=None, **overrides):
        from lhrcnn.config import load_config
        from lhrcnn.detector import load_detector
        from lhrcnn.paths import experiment_output_dir, require_dir, resolve_checkpoint
        experiment = os.fspath(require_dir(os.fspath(experiment), "experiment folder"))
        config = load_config(experiment, **overrides)
        if checkpoint is None:
            checkpoint = os.path.join(experiment_output_dir(config, experiment), "model_dump")
        prefix = resolve_checkpoint(checkpoint)
        self._set_detector(load_detector(experiment, checkpoint=prefix, **overrides), score_threshold)
        self.checkpoint = prefix

    @classmethod
    def from_detector(cls, detector, *, score_threshold=None):
        """A predictor over `detector` (a TwoStageDetector with weights; its config gives the
        preprocessing and the class names)."""
        predictor = cls.__new__(cls)
        predictor._set_detector(detector, score_threshold)
        predictor.checkpoint = None
        return predictor

    @classmethod
    def from_saved_model(cls, path, *, score_threshold=None):
        """A predictor over an export of `lhrcnn export`: a version folder (holding saved_model.pb)
        or a model base folder (its largest version)."""
        import tensorflow as tf
        version_dir = saved_model_version(path)
        names, index_of, baked, max_pixels = _export_details(version_dir)
        loaded = tf.saved_model.load(version_dir)
        from lhrcnn.export import serving
        if serving.DEFAULT_SIGNATURE not in loaded.signatures:
            raise ValueError(f"SavedModel {version_dir} has no `{serving.DEFAULT_SIGNATURE}` signature (it has "
                             f"{sorted(loaded.signatures)})")
        signature = loaded.signatures[serving.DEFAULT_SIGNATURE]
        table = np.zeros([max(index_of, default=0) + 1], np.int32)
        for category, index in index_of.items():
            table[category] = index

        def run(image):
            out = signature(**{serving.IMAGES_INPUT: tf.constant(image[None])})
            categories = np.asarray(out["detection_classes"])[0].astype(np.int64)
            known = (categories >= 0) & (categories < len(table))
            classes = np.where(known, table[np.clip(categories, 0, len(table) - 1)], 0)
            return (np.asarray(out["detection_boxes_pixels"])[0], np.asarray(out["detection_scores"])[0], classes,
                    int(np.asarray(out["num_detections"])[0]))

        predictor = cls.__new__(cls)
        predictor.config, predictor.detector, predictor.checkpoint = None, None, None
        predictor.saved_model = version_dir
        predictor.max_image_pixels = max_pixels
        predictor._loaded = loaded  # keeps the signature's variables alive
        predictor._run = run
        predictor.class_names = names
        predictor.score_threshold = baked if score_threshold is None else float(score_threshold)
        return predictor

    @classmethod
    def from_edge_model(cls, path, *, score_threshold=None, num_threads=None):
        """A predictor over an edge export of `lhrcnn export --format tflite|onnx` (model.tflite or
        model.onnx, or its folder), run by LiteRT or ONNX Runtime (lhrcnn.export.edge_runtime);
        images of any size are letterboxed into its fixed input."""
        from lhrcnn.export.edge_runtime import EdgeModel
        model = EdgeModel(path, num_threads=num_threads)

        def run(image):
            boxes, scores, classes, _ = model.detect(image, score_threshold=float("-inf"))
            return boxes, scores, classes, len(scores)

        predictor = cls.__new__(cls)
        predictor.config, predictor.detector, predictor.checkpoint, predictor.saved_model = None, None, None, None
        predictor.edge_model = model
        predictor.max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS
        predictor._run = run
        predictor.class_names = model.class_names
        predictor.score_threshold = model.score_threshold if score_threshold is None else float(score_threshold)
        return predictor

    def _set_detector(self, detector, score_threshold):
        import tensorflow as tf

        from lhrcnn.data.preprocess import preprocess_for_eval
        from lhrcnn.evaluation.coco_eval import inference_function
        self.detector, self.config, self.saved_model = detector, detector.config, None
        self.max_image_pixels = int(self.config.max_image_pixels)
        infer = inference_function(detector)  # one trace for every image size

        def run(image):
            images, image_info = preprocess_for_eval(tf.convert_to_tensor(image)[None], self.config)
            out = infer(images, image_info)
            return (np.asarray(out["boxes"])[0], np.asarray(out["scores"])[0], np.asarray(out["classes"])[0],
                    int(np.asarray(out["num_detections"])[0]))

        self._run = run
        self.class_names = tuple(self.config.class_names)
        self.score_threshold = (float(self.config.test_score_threshold) if score_threshold is None
                                else float(score_threshold))

    def __call__(self, images, score_threshold=None):
        """Detections of an image (a path, bytes or a uint8 [H, W, 3] array), or a list of
        Detections for a list or tuple of images. score_threshold: this call's, instead of the
        predictor's."""
        if isinstance(images, (list, tuple)):
            return [self._detect(image, score_threshold) for image in images]
        return self._detect(images, score_threshold)

    def _detect(self, image, score_threshold):
        pixels = read_image(image, self.max_image_pixels)
        threshold = self.score_threshold if score_threshold is None else float(score_threshold)
        boxes, scores, classes, count = self._run(pixels)
        keep = (np.arange(scores.shape[0]) < count) & (classes > 0) & (scores > threshold)
        classes = classes[keep].astype(np.int32)
        return Detections(boxes=boxes[keep].astype(np.float32), scores=scores[keep].astype(np.float32),
                          class_ids=classes, class_names=tuple(self.class_names[c] for c in classes),
                          image_size=(int(pixels.shape[0]), int(pixels.shape[1])))

    def draw(self, image, detections):
        """uint8 [H, W, 3]: `image` (anything __call__ takes) with the boxes, class names and
        scores of `detections` drawn (lhrcnn.visualize.draw_detections)."""
        from lhrcnn.visualize import draw_detections
        return np.array(draw_detections(read_image(image, self.max_image_pixels), detections.to_list()), np.uint8)
