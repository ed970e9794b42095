"""A client for a detector served by TF Serving (an export of scripts/export.py):

  python scripts/serving_client.py --server localhost:8500 IMAGE [IMAGE ...]          # gRPC
  python scripts/serving_client.py --server localhost:8501 --rest IMAGE [IMAGE ...]   # REST
      [--model-name lhrcnn] [--version N] [--signature serve_bytes|serving_default]
      [--score-threshold 0.5] [--label-map FILE] [--output DIR] [--timeout 60]

serve_bytes (default) sends the files' bytes, all images in one request; serving_default sends
decoded uint8 pixels, one request per image (a batch shares one size). Prints each image's
detections (category, score, box in pixels) and writes <output>/<name>_detections.png (drawn)
and <name>_detections.json. --label-map is an export's assets.extra/label_map.json (category id
-> name); without it categories are shown by id. gRPC needs tensorflow-serving-api; REST only the
standard library.
"""
import base64
import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SERVER = flags.DEFINE_string("server", None, "HOST:PORT of the model server (gRPC port, e.g. 8500; with --rest "
                             "the REST port, e.g. 8501).")
REST = flags.DEFINE_boolean("rest", False, "Use the REST API instead of gRPC.")
MODEL_NAME = flags.DEFINE_string("model_name", "lhrcnn", "The model's name on the server (its MODEL_NAME).")
MODEL_VERSION = flags.DEFINE_integer("version", None, "Ask for this version (default: the server's latest).",
                                     lower_bound=0)
SIGNATURE = flags.DEFINE_enum("signature", "serve_bytes", ["serve_bytes", "serving_default"],
                              "serve_bytes: encoded files, one request; serving_default: uint8 pixels, one "
                              "request per image.")
SCORE_THRESHOLD = flags.DEFINE_float("score_threshold", 0.5, "Show detections scoring above this.")
LABEL_MAP = flags.DEFINE_string("label_map", None, "JSON {category id: name} (an export's "
                                "assets.extra/label_map.json).")
OUTPUT = flags.DEFINE_string("output", "output/serving_client", "Where the drawn images and json files go.")
TIMEOUT = flags.DEFINE_float("timeout", 60.0, "Seconds to wait for each answer.")
flags.DEFINE_alias("model-name", "model_name")
flags.DEFINE_alias("score-threshold", "score_threshold")
flags.DEFINE_alias("label-map", "label_map")
flags.mark_flag_as_required("server")

OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections", "detection_boxes_pixels")


class ClientError(Exception):
    """A failure the user can act on: printed as one line, exit status 1."""


def predict_grpc(server, model_name, signature, inputs, version=None, timeout=60.0):
    """{output name: np.ndarray} of a Predict call over gRPC; inputs: {name: np.ndarray}."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(server, options=options) as channel:
        try:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                raise ClientError(f"cannot reach {server} (gRPC): {e.details()}") from None
            raise ClientError(f"{server} (gRPC) answered {e.code().name}: {e.details()}") from None
    return {key: tf.make_ndarray(value) for key, value in response.outputs.items()}


def predict_rest(server, model_name, signature, instances, version=None, timeout=60.0):
    """{output name: np.ndarray} of a REST :predict call (row format); instances: JSON values."""
    import urllib.error
    import urllib.request

    import numpy as np

    path = f"/v1/models/{model_name}" + (f"/versions/{version}" if version is not None else "") + ":predict"
    body = json.dumps({"signature_name": signature, "instances": instances}).encode()
    request = urllib.request.Request(f"http://{server}{path}", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            predictions = json.loads(reply.read())["predictions"]
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("error", "")
        except ValueError:
            message = e.reason
        raise ClientError(f"{server} (REST) answered HTTP {e.code}: {message}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ClientError(f"cannot reach {server} (REST): {getattr(e, 'reason', e)}") from None
    except (KeyError, ValueError) as e:
        raise ClientError(f"{server} (REST) sent an unexpected answer: {e}") from None
    return {key: np.asarray([p[key] for p in predictions], np.float32) for key in OUTPUTS}


def detections_of(outputs, index, score_threshold, names):
    """The detections of image `index` of a response, best first, scoring at least the threshold."""
    detections = []
    for k in range(int(outputs["num_detections"][index])):
        score = float(outputs["detection_scores"][index][k])
        if score <= score_threshold:
            continue
        category = int(round(float(outputs["detection_classes"][index][k])))
        detections.append({"class": names.get(category, f"category {category}"), "category_id": category,
                           "class_index": category, "score": score,
                           "box": [float(v) for v in outputs["detection_boxes_pixels"][index][k]],
                           "box_normalised_yxyx": [float(v) for v in outputs["detection_boxes"][index][k]]})
    return detections


def _read_images(paths, need_pixels):
    """(bytes, RGB uint8 pixels or None) per path; ClientError naming a missing or unreadable file."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError
    data = []
    for path in paths:
        if not os.path.isfile(path):
            raise ClientError(f"image {path} does not exist")
        with open(path, "rb") as f:
            raw = f.read()
        pixels = None
        if need_pixels:
            try:
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
            except (UnidentifiedImageError, OSError) as e:
                raise ClientError(f"image {path} cannot be decoded ({e})") from None
        data.append((raw, pixels))
    return data


def _load_label_map(path):
    if path is None:
        return {}
    try:
        with open(path) as f:
            return {int(k): str(v) for k, v in json.load(f).items()}
    except FileNotFoundError:
        raise ClientError(f"label map {path} does not exist") from None
    except (OSError, ValueError, AttributeError) as e:
        raise ClientError(f"label map {path} is not a JSON object of category id -> name ({e})") from None


def run(paths):
    import numpy as np

    from lhrcnn.visualize import draw_detections, output_names

    names = _load_label_map(LABEL_MAP.value)
    images = _read_images(paths, need_pixels=True)
    server, model, version = SERVER.value, MODEL_NAME.value, MODEL_VERSION.value
    if SIGNATURE.value == "serve_bytes":
        if REST.value:
            outputs = predict_rest(server, model, "serve_bytes",
                                   [{"b64": base64.b64encode(raw).decode("ascii")} for raw, _ in images],
                                   version, TIMEOUT.value)
        else:
            outputs = predict_grpc(server, model, "serve_bytes",
                                   {"image_bytes": np.array([raw for raw, _ in images], dtype=object)},
                                   version, TIMEOUT.value)
        per_image = [(outputs, i) for i in range(len(images))]
    else:
        per_image = []
        for _, pixels in images:
            if REST.value:
                outputs = predict_rest(server, model, "serving_default", [pixels.tolist()], version, TIMEOUT.value)
            else:
                outputs = predict_grpc(server, model, "serving_default", {"images": pixels[None]}, version,
                                       TIMEOUT.value)
            per_image.append((outputs, 0))

    os.makedirs(OUTPUT.value, exist_ok=True)
    for path, name, (_, pixels), (outputs, index) in zip(paths, output_names(paths), images, per_image):
        detections = detections_of(outputs, index, SCORE_THRESHOLD.value, names)
        print(f"{path}: {len(detections)} detections (score > {SCORE_THRESHOLD.value:g})")
        for det in detections:
            x1, y1, x2, y2 = det["box"]
            print(f"  {det['class']:<16} {det['score']:.3f}  [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]")
        png = os.path.join(OUTPUT.value, f"{name}_detections.png")
        draw_detections(pixels, detections).save(png, format="PNG")
        with open(os.path.join(OUTPUT.value, f"{name}_detections.json"), "w") as f:
            json.dump({"image": os.path.abspath(path), "height": int(pixels.shape[0]), "width": int(pixels.shape[1]),
                       "server": server, "api": "rest" if REST.value else "grpc", "signature": SIGNATURE.value,
                       "score_threshold": SCORE_THRESHOLD.value, "detections": detections}, f, indent=1)
        print(f"  -> {png}")


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("give at least one image")
    try:
        run(argv[1:])
    except ClientError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
