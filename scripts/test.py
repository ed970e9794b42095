"""COCO evaluation of a trained detector (the original's test.py):

  python scripts/test.py --experiment experiments/lhrcnn/thundernet.snet146.synthetic
                         [--checkpoint PATH] [--annotations FILE --images DIR] [--output DIR]
                         [--max-images N] [--batch-size 1]

Runs the detector over the eval set, writes <output>/results.json (COCO results entries) and
<output>/metrics.json (the 12 COCOeval statistics, images, images/s, checkpoint) and prints the
statistics. Defaults: the latest checkpoint in output/<user>/<experiment>/model_dump/, the
config's eval_annotations / eval_images, output/<user>/<experiment>/eval_dump/. Paths from the
config and paths on the command line are relative to the working directory (lhrcnn.paths).
"""
import dataclasses
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXPERIMENT = flags.DEFINE_string("experiment", None, "Experiment folder (holds config.py and network_desp.py).")
CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Checkpoint prefix or folder (its latest checkpoint). "
                                 "Default: output/<user>/<experiment>/model_dump/.")
ANNOTATIONS = flags.DEFINE_string("annotations", None, "COCO instances json (default: the config's eval_annotations).")
IMAGES = flags.DEFINE_string("images", None, "Image folder (default: the config's eval_images).")
OUTPUT = flags.DEFINE_string("output", None, "Where results.json and metrics.json go "
                             "(default: output/<user>/<experiment>/eval_dump/).")
MAX_IMAGES = flags.DEFINE_integer("max_images", None, "Evaluate only the first N images in image-id order "
                                  "(scored on their own ground truth only).", lower_bound=1)
BATCH_SIZE = flags.DEFINE_integer("batch_size", 1, "Images per detector call.", lower_bound=1)
flags.DEFINE_alias("max-images", "max_images")
flags.DEFINE_alias("batch-size", "batch_size")
flags.mark_flag_as_required("experiment")


def run():
    from lhrcnn.config import load_config
    from lhrcnn.errors import UserError
    from lhrcnn.paths import config_path, experiment_output_dir, require_dir, require_file, resolve_checkpoint

    experiment = require_dir(EXPERIMENT.value, "experiment folder")
    try:
        config = load_config(experiment)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    out_root = experiment_output_dir(config, experiment)
    annotations = require_file(ANNOTATIONS.value or config_path(config.eval_annotations), "annotation file")
    images = require_dir(IMAGES.value or config_path(config.eval_images), "image folder")
    checkpoint = resolve_checkpoint(CHECKPOINT.value or os.path.join(out_root, "model_dump"))
    output = OUTPUT.value or os.path.join(out_root, "eval_dump")

    from lhrcnn.data.coco import load_coco
    from lhrcnn.data.pipeline import make_dataset
    from lhrcnn.detector import load_detector
    from lhrcnn.evaluation import coco_eval

    try:
        dataset = load_coco(annotations, images, class_names=config.class_names)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"cannot read the eval set {annotations}: {e}") from None
    if MAX_IMAGES.value:  # the first N records (image-id order): the pipeline reads only those
        dataset = dataclasses.replace(dataset, records=dataset.records[:MAX_IMAGES.value])
    num_images = len(dataset.records)
    if not num_images:
        raise UserError(f"no images to evaluate in {annotations} (with images in {images})")
    tf_dataset = make_dataset(dataset, config, training=False, batch_size=BATCH_SIZE.value)
    print(f"evaluating {checkpoint} on {num_images} images of {annotations}")
    detector = load_detector(experiment, checkpoint=checkpoint)
    results, image_ids, speed = coco_eval.run_inference(detector, tf_dataset, dataset.category_ids,
                                                        num_images=num_images)
    if len(image_ids) < num_images:
        print(f"warning: {num_images - len(image_ids)} of {num_images} images could not be read (named in the "
              f"warnings above) and are not evaluated")
    stats = coco_eval.evaluate(dataset.annotation_file, results, image_ids=image_ids, verbose=False)
    results_path = coco_eval.write_json(os.path.join(output, "results.json"), results)
    metrics = dict(stats)
    metrics.update(images=len(image_ids), images_per_second=speed["images_per_second"], seconds=speed["seconds"],
                   checkpoint=os.path.abspath(checkpoint), annotations=os.path.abspath(annotations),
                   experiment=os.path.abspath(experiment))
    metrics_path = coco_eval.write_json(os.path.join(output, "metrics.json"), metrics, indent=1)
    print(stats.summary)
    print(f"{len(image_ids)} images, {len(results)} detections, {speed['images_per_second']:.2f} images/s")
    print(f"wrote {results_path}\nwrote {metrics_path}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from lhrcnn.errors import UserError
    try:
        run()
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
