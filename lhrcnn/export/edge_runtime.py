"""Running an edge export (`lhrcnn export --format tflite|onnx`) without TensorFlow: NumPy and the
format's runtime only (LiteRT's `ai-edge-litert` for .tflite, `onnxruntime` for .onnx), each
imported when a model of its format is opened. Nothing here imports TensorFlow.

An edge model has one fixed input, uint8 [1, H, W, 3] RGB (export_info.json's input_size), and
applies the eval preprocessing to it inside (resize by the eval rule, unless exported without it,
then mean and padding). An image of another size is letterboxed into the H x W canvas first
(`letterbox`): resized, bilinear with half-pixel centres as TensorFlow's resize, so that after the
model's own resize it is at the eval rule's scale (smaller if it would not fit), placed at the top
left, and the rest filled with the mean colour (which the model's normalisation maps to within 0.5
of the zero padding the TF detector sees).
`EdgeModel.detect` maps the boxes back to the image's pixels.
"""
import json
import os

import numpy as np

from lhrcnn.export import IMAGES_INPUT as INPUT_NAME
from lhrcnn.export import OUTPUT_NAMES  # noqa: F401 (part of this module's interface)

TFLITE_FILE = "model.tflite"
ONNX_FILE = "model.onnx"
INFO_FILE = "export_info.json"
LABEL_MAP_FILE = "label_map.json"


# ----------------------------------------------------------------------------- geometry


def eval_scale(height, width, short_size, max_size):
    """The eval rule's scale (lhrcnn.data.preprocess.resized_shape): short side to short_size,
    lowered so the long side is at most max_size."""
    scale = short_size / min(height, width)
    if scale * max(height, width) > max_size:
        scale = max_size / max(height, width)
    return scale


def _interpolation(out_size, in_size):
    """(lower, upper, lerp) of TensorFlow's half-pixel bilinear resize along one axis (float32)."""
    scale = np.float32(in_size) / np.float32(out_size)
    position = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(position)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(position), in_size - 1).astype(np.int64)
    return lower, upper, (position - floor).astype(np.float32)


def resize_bilinear(image, height, width):
    """float32 [height, width, C] of `image` [h, w, C]: tf.image.resize(method="bilinear") (half-
    pixel centres, no antialiasing), computed the same way in float32."""
    source = np.asarray(image, np.float32)
    y0, y1, dy = _interpolation(height, source.shape[0])
    x0, x1, dx = _interpolation(width, source.shape[1])
    dx = dx[None, :, None]
    top = source[y0][:, x0] + (source[y0][:, x1] - source[y0][:, x0]) * dx
    bottom = source[y1][:, x0] + (source[y1][:, x1] - source[y1][:, x0]) * dx
    return top + (bottom - top) * dy[:, None, None]


def letterbox(image, canvas_height, canvas_width, short_size, max_size, mean_rgb, model_scale=1.0):
    """(uint8 [canvas_height, canvas_width, 3], scale): `image` resized by
    min(eval rule / model_scale, fit inside the canvas), rounded to uint8, at the top left of a
    canvas filled with the rounded mean colour. model_scale: what the model's own preprocessing
    then scales the canvas by (export_info's in_model_scale), so that the image ends at the eval
    rule's scale. `scale` maps canvas pixels back to the image's."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    height, width = image.shape[:2]
    scale = min(eval_scale(height, width, short_size, max_size) / model_scale, canvas_height / height,
                canvas_width / width)
    new_h = min(canvas_height, max(1, int(round(height * scale))))
    new_w = min(canvas_width, max(1, int(round(width * scale))))
    canvas = np.empty([canvas_height, canvas_width, 3], np.uint8)
    canvas[...] = np.clip(np.round(np.asarray(mean_rgb, np.float64)), 0, 255).astype(np.uint8)
    if (new_h, new_w) == (height, width):
        canvas[:height, :width] = image
    else:
        canvas[:new_h, :new_w] = np.clip(np.round(resize_bilinear(image, new_h, new_w)), 0, 255).astype(np.uint8)
    return canvas, scale


# ----------------------------------------------------------------------------- runtimes


class _LiteRT:
    def __init__(self, path, num_threads):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise ImportError("running a .tflite model needs the LiteRT runtime: pip install ai-edge-litert "
                              "(or lhrcnn[edge])") from None
        self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner()
        self.provider = "LiteRT (XNNPACK)"

    def __call__(self, images):
        return {k: np.asarray(v) for k, v in self.runner(**{INPUT_NAME: images}).items()}


class _OnnxRuntime:
    def __init__(self, path, num_threads, providers=None):
        try:
            import onnxruntime
        except ImportError:
            raise ImportError("running a .onnx model needs ONNX Runtime: pip install onnxruntime "
                              "(or lhrcnn[edge])") from None
        options = onnxruntime.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
            options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(path, sess_options=options,
                                                    providers=providers or ["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.provider = self.session.get_providers()[0]

    def __call__(self, images):
        return dict(zip(self.outputs, self.session.run(self.outputs, {INPUT_NAME: images})))


def read_info(model_path):
    """export_info.json next to `model_path` (FileNotFoundError / ValueError naming it)."""
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), INFO_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: an edge model is read with the export_info.json that "
                                "`lhrcnn export --format tflite|onnx` writes beside it")
    try:
        with open(path) as f:
            info = json.load(f)
        info["input_size"] = [int(v) for v in info["input_size"]]
        return info
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not an edge export's info file ({e})") from None


def model_file(path):
    """The model file `path` names: itself, or the one model.tflite / model.onnx of a folder
    (FileNotFoundError when a folder holds neither or both)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        found = [os.path.join(path, f) for f in (TFLITE_FILE, ONNX_FILE) if os.path.isfile(os.path.join(path, f))]
        if len(found) != 1:
            raise FileNotFoundError(f"{path} holds {'no' if not found else 'both'} {TFLITE_FILE} / {ONNX_FILE}; "
                                    "name the model file")
        path = found[0]
    return path


class EdgeModel:
    """An edge export, run by the runtime its file's extension names.

    EdgeModel(path, num_threads=None): `path` is a model.tflite or model.onnx (or the folder
    holding one). `run(canvas)` runs the model on uint8 [H, W, 3] (or [1, H, W, 3]) of its input
    size and returns its outputs; `detect(image)` letterboxes an RGB image of any size and returns
    (boxes [K, 4] x1, y1, x2, y2 in the image's pixels, scores [K], class indices [K] (1..N),
    category ids [K]) of the detections scoring above `score_threshold` (default: the export's).
    """

    def __init__(self, path, num_threads=None, providers=None):
        path = model_file(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"edge model {path} does not exist")
        self.path = path
        self.info = read_info(path)
        if path.endswith(".tflite"):
            self.format, self._runtime = "tflite", _LiteRT(path, num_threads)
        elif path.endswith(".onnx"):
            self.format, self._runtime = "onnx", _OnnxRuntime(path, num_threads, providers)
        else:
            raise ValueError(f"{path}: an edge model is a .tflite or .onnx file")
        self.input_size = tuple(self.info["input_size"])
        self.class_names = tuple(self.info["class_names"])
        self.category_ids = tuple(int(c) for c in self.info["category_ids"])
        self.score_threshold = float(self.info["score_threshold"])
        self.provider = self._runtime.provider

    def run(self, canvas):
        canvas = np.asarray(canvas)
        if canvas.ndim == 3:
            canvas = canvas[None]
        expected = (1, *self.input_size, 3)
        if canvas.shape != expected or canvas.dtype != np.uint8:
            raise ValueError(f"{self.path} takes uint8 {list(expected)}, got {canvas.dtype} {list(canvas.shape)}")
        return self._runtime(canvas)

    def letterbox(self, image):
        return letterbox(image, *self.input_size, self.info["eval_image_short_size"],
                         self.info["eval_image_max_size"], self.info["mean_rgb"], self.info.get("in_model_scale", 1.0))

    def detect(self, image, score_threshold=None):
        image = np.asarray(image)
        canvas, scale = self.letterbox(image)
        out = self.run(canvas)
        count = int(np.asarray(out["num_detections"]).reshape(-1)[0])
        boxes = np.asarray(out["detection_boxes_pixels"], np.float32)[0, :count] / np.float32(scale)
        height, width = image.shape[:2]
        # the detector's clip (x in [0, width - 1], y in [0, height - 1]), on the image, not the canvas
        boxes = np.clip(boxes, 0, [width - 1, height - 1, width - 1, height - 1]).astype(np.float32)
        scores = np.asarray(out["detection_scores"], np.float32)[0, :count]
        categories = np.asarray(out["detection_classes"])[0, :count].astype(np.int64)
        index_of = {c: i for i, c in enumerate(self.category_ids) if i > 0}
        classes = np.array([index_of.get(int(c), 0) for c in categories], np.int32)
        threshold = self.score_threshold if score_threshold is None else float(score_threshold)
        keep = (scores > threshold) & (classes > 0)
        return boxes[keep], scores[keep], classes[keep], categories[keep]
