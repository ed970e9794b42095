"""Exports a trained detector as a SavedModel version for TF Serving:

  python scripts/export.py --experiment experiments/lhrcnn/thundernet.snet146.synthetic
                           --output models/lhrcnn [--checkpoint PATH] [--version N] [--ops tf|custom]
                           [--max-detections 100] [--score-threshold S] [--annotations FILE]

Writes <output>/<version>/ (saved_model.pb, variables/, assets.extra/ with the warm-up requests,
label_map.json and export_info.json), atomically; an existing version is never overwritten.
Signatures: serving_default (images uint8 [N, H, W, 3]) and serve_bytes (image_bytes string [N],
JPEG or PNG); outputs detection_boxes (normalised y1, x1, y2, x2), detection_scores,
detection_classes (category ids), num_detections, detection_boxes_pixels (x1, y1, x2, y2).

--ops tf (default) uses stock TensorFlow ops only (any tensorflow_model_server); --ops custom puts
the compiled lhrcnn ops in the graph (a server built with //ops:lhrcnn_ops; see the README).
Defaults: the latest checkpoint in output/<user>/<experiment>/model_dump/, the next version, the
config's test_max_detections and test_score_threshold, category ids from --annotations or the
config's eval_annotations (else COCO's ids for COCO's classes, else the class index).
"""
import os
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXPERIMENT = flags.DEFINE_string("experiment", None, "Experiment folder (holds config.py and network_desp.py).")
CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Checkpoint prefix or folder (its latest checkpoint). "
                                 "Default: output/<user>/<experiment>/model_dump/.")
OUTPUT = flags.DEFINE_string("output", None, "The model's base folder (TF Serving's model_base_path); the "
                             "export goes to <output>/<version>/.")
VERSION = flags.DEFINE_integer("version", None, "Version number (default: one more than the largest present).",
                               lower_bound=1)
OPS = flags.DEFINE_enum("ops", "tf", ["tf", "custom"], "tf: stock TensorFlow ops only (any model server); "
                        "custom: the compiled lhrcnn ops (a server built with //ops:lhrcnn_ops).")
MAX_DETECTIONS = flags.DEFINE_integer("max_detections", None, "Detections per image (K; default: the config's "
                                      "test_max_detections).", lower_bound=1)
SCORE_THRESHOLD = flags.DEFINE_float("score_threshold", None, "Drop detections scoring at most this (default: "
                                     "the config's test_score_threshold).")
ANNOTATIONS = flags.DEFINE_string("annotations", None, "COCO json whose categories give detection_classes' ids "
                                  "(default: the config's eval_annotations when it exists).")
VERIFY = flags.DEFINE_boolean("verify", True, "Load the written model and run its warm-up requests before "
                              "putting the version in place.")
flags.DEFINE_alias("max-detections", "max_detections")
flags.DEFINE_alias("score-threshold", "score_threshold")
flags.mark_flags_as_required(["experiment", "output"])


def run():
    from lhrcnn.config import load_config
    from lhrcnn.errors import UserError
    from lhrcnn.paths import experiment_output_dir, require_dir, resolve_checkpoint
    from lhrcnn.export import categories
    from lhrcnn.export.saved_model import next_version

    experiment = require_dir(EXPERIMENT.value, "experiment folder")
    overrides = {"ops_backend": OPS.value}
    if MAX_DETECTIONS.value is not None:
        overrides["test_max_detections"] = MAX_DETECTIONS.value
    if SCORE_THRESHOLD.value is not None:
        overrides["test_score_threshold"] = SCORE_THRESHOLD.value
    try:
        config = load_config(experiment, **overrides)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    output = os.path.abspath(OUTPUT.value)
    if os.path.exists(output) and not os.path.isdir(output):
        raise UserError(f"--output {output} exists and is not a folder")
    version = VERSION.value or next_version(output)
    if os.path.exists(os.path.join(output, str(version))):
        raise UserError(f"{os.path.join(output, str(version))} exists already; refusing to overwrite a version "
                        "(pick another --version, or leave it out for the next one)")
    checkpoint = resolve_checkpoint(CHECKPOINT.value or os.path.join(experiment_output_dir(config, experiment),
                                                                     "model_dump"))
    try:
        category_ids, source = categories.resolve_category_ids(config, ANNOTATIONS.value)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    if OPS.value == "custom":
        from lhrcnn import ops
        if not ops.custom_ops_available():
            raise UserError(f"--ops custom needs the compiled ops: {ops.custom_ops_load_error()}")

    from lhrcnn.detector import load_detector
    from lhrcnn.export.saved_model import export_saved_model

    print(f"exporting {checkpoint} ({OPS.value} ops) to {os.path.join(output, str(version))}")
    try:
        detector = load_detector(experiment, checkpoint=checkpoint, **overrides)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    try:
        path = export_saved_model(
            detector, output, category_ids=category_ids, version=version, verify=VERIFY.value,
            info={"experiment": os.path.abspath(experiment), "checkpoint": os.path.abspath(checkpoint),
                  "category_ids_from": source})
    except (FileExistsError, ValueError) as e:
        raise UserError(str(e)) from None
    print(f"wrote {path}\n  signatures: serving_default (images uint8 [N, H, W, 3]), serve_bytes (image_bytes "
          f"string [N])\n  category ids from {source}")
    name = os.path.basename(output)
    if OPS.value == "custom":
        print("serve it with a tensorflow_model_server built with //ops:lhrcnn_ops (README: \"Linking the ops into "
              "tensorflow_model_server\"); a stock server cannot load it")
    else:
        print(f"serve it: docker run -p 8500:8500 -p 8501:8501 -v {output}:/models/{name} -e MODEL_NAME={name} "
              "tensorflow/serving:2.20.0")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # TF's INFO lines about saving are noise here
        logging.set_verbosity(logging.WARNING)
    from lhrcnn.errors import UserError
    try:
        run()
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
