"""Detections on your own images:

  python scripts/demo.py --experiment experiments/lhrcnn/thundernet.snet146.synthetic
                         --checkpoint output/lhrcnn/thundernet.snet146.synthetic/model_dump
                         [--output DIR] [--score-threshold 0.5] IMAGE [IMAGE ...]

Each image is preprocessed as the eval pipeline does (eval short/max side, mean, padding); for
each, <output>/<name>_detections.png (boxes, class names, scores drawn) and
<output>/<name>_detections.json are written. Default output: output/<user>/<experiment>/demo/.
"""
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXPERIMENT = flags.DEFINE_string("experiment", None, "Experiment folder (holds config.py and network_desp.py).")
CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Checkpoint prefix or folder (its latest checkpoint).")
OUTPUT = flags.DEFINE_string("output", None, "Output folder (default: output/<user>/<experiment>/demo/).")
SCORE_THRESHOLD = flags.DEFINE_float("score_threshold", 0.5, "Keep detections scoring at least this.")
flags.DEFINE_alias("score-threshold", "score_threshold")
flags.mark_flags_as_required(["experiment", "checkpoint"])

def run(image_paths):
    from lhrcnn.config import load_config
    from lhrcnn.errors import UserError
    from lhrcnn.paths import experiment_output_dir, require_dir, require_file, resolve_checkpoint

    experiment = require_dir(EXPERIMENT.value, "experiment folder")
    for path in image_paths:  # before anything slow
        require_file(path, "image")
    try:
        config = load_config(experiment)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    checkpoint = resolve_checkpoint(CHECKPOINT.value)
    from lhrcnn.evaluation.preprocess import decode_image_file
    images = []
    for path in image_paths:  # every image is checked before the (slow) detector is built
        try:
            images.append(decode_image_file(path))
        except (FileNotFoundError, ValueError) as e:
            raise UserError(str(e)) from None
    output = OUTPUT.value or os.path.join(experiment_output_dir(config, experiment), "demo")
    os.makedirs(output, exist_ok=True)

    import numpy as np

    from lhrcnn.detector import load_detector
    from lhrcnn.evaluation.coco_eval import inference_function, write_json
    from lhrcnn.evaluation.preprocess import preprocess_image
    from lhrcnn.visualize import draw_detections, output_names

    detector = load_detector(experiment, checkpoint=checkpoint)
    infer = inference_function(detector)
    for path, name, image in zip(image_paths, output_names(image_paths), images):
        batch, info = preprocess_image(image, config)
        out = {k: np.asarray(v)[0] for k, v in infer(batch, info).items()}
        detections = []
        for k in range(int(out["num_detections"])):
            cls, score = int(out["classes"][k]), float(out["scores"][k])
            if cls > 0 and score >= SCORE_THRESHOLD.value:
                detections.append({"class": config.class_names[cls], "class_index": cls, "score": score,
                                   "box": [float(v) for v in out["boxes"][k]]})
        png = os.path.join(output, f"{name}_detections.png")
        tmp = os.path.join(output, f".{name}_detections.{os.getpid()}.png")
        draw_detections(image, detections).save(tmp, format="PNG")
        os.replace(tmp, png)
        write_json(os.path.join(output, f"{name}_detections.json"),
                   {"image": os.path.abspath(path), "height": int(image.shape[0]), "width": int(image.shape[1]),
                    "checkpoint": os.path.abspath(checkpoint), "score_threshold": SCORE_THRESHOLD.value,
                    "detections": detections}, indent=1)
        print(f"{path}: {len(detections)} detections -> {png}")


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("give at least one image")
    from lhrcnn.errors import UserError
    try:
        run(argv[1:])
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
