"""Warm-up requests of an export (assets.extra/tf_serving_warmup_requests): PredictionLog records,
as TF Serving's SavedModel warm-up reads them, that the server replays when it loads a version,
so that the first user request does not pay for graph optimisation and memory allocation."""
import numpy as np
import tensorflow as tf

from lhrcnn.export.serving import BYTES_INPUT, BYTES_SIGNATURE, DEFAULT_SIGNATURE, IMAGES_INPUT

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"


def warmup_image(height, width, seed=0):
    """A deterministic [height, width, 3] uint8 RGB image: a colour gradient with a few filled
    rectangles (something for the RPN and the NMS to work on)."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    image = np.stack([60 + 120 * x, 60 + 120 * y, 150 - 60 * x * y], axis=-1)
    for _ in range(4):
        h = int(rng.integers(max(1, height // 8), max(2, height // 2)))
        w = int(rng.integers(max(1, width // 8), max(2, width // 2)))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        image[top:top + h, left:left + w] = rng.integers(0, 256, 3)
    return image.astype(np.uint8)


def warmup_requests(config, model_name):
    """The PredictionLog records of an export: `serving_default` with one image of the eval size
    (short side x 4/3, within the max side), and `serve_bytes` with a JPEG and a PNG of different
    sizes in one request."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    short = int(config.eval_image_short_size)
    long = int(min(config.eval_image_max_size, round(short * 4 / 3)))
    landscape, portrait = warmup_image(short, long, seed=1), warmup_image(long, short, seed=2)
    jpeg = tf.io.encode_jpeg(landscape, quality=90).numpy()
    png = tf.io.encode_png(portrait).numpy()

    def log(signature, inputs):
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name,
                                                                            signature_name=signature))
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(value)
        return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))

    return [
        log(DEFAULT_SIGNATURE, {IMAGES_INPUT: tf.make_tensor_proto(landscape[None])}),
        log(BYTES_SIGNATURE, {BYTES_INPUT: tf.make_tensor_proto([jpeg, png], dtype=tf.string, shape=[2])}),
    ]


def write_warmup_file(path, logs):
    """Writes PredictionLog records as a TFRecord file (the format TF Serving reads)."""
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())


def read_warmup_file(path):
    """The PredictionLog records of a warm-up file."""
    from tensorflow_serving.apis import prediction_log_pb2
    return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(path)]
