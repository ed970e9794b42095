"""The main job (`make demo`) on the embedded default: generate the synthetic dataset, train the
default experiment, evaluate it with COCO mAP, draw detections for a few validation images, export
it as a SavedModel for TF Serving (`<output>/export/<version>/`, stock TF ops), and print the result. Every step is one of the user-facing scripts, run as a subprocess; each is
idempotent or resumable, so re-running after an interruption continues where it stopped.

  python scripts/run_main_job.py [--experiment DIR] [--train_images 2000] [--val_images 200]
                                 [--steps N] [--output DIR]

The default experiment is the repository's lhrcnn.config.MAIN_JOB_EXPERIMENT (next to this
script); --experiment, --output and the config's data and output paths are relative to the working
directory (lhrcnn.paths), which every step inherits: `make demo` runs it from the repository root.

The job writes the synthetic set into the folders of the experiment's train_annotations and
eval_annotations, so --experiment must be a synthetic experiment: its config extends synthetic.base
or its train_annotations lies under data/synthetic/. Any other is refused (one `error:` line, exit
status 1) before anything is written.
"""
import json
import os
import subprocess
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout: scripts/, experiments/
sys.path.insert(0, ROOT)

from lhrcnn.config import MAIN_JOB_EXPERIMENT  # noqa: E402

EXPERIMENT = flags.DEFINE_string("experiment", MAIN_JOB_EXPERIMENT,
                                 "The experiment to train (its config names the data); the default is the "
                                 "repository's, found next to this script.")
TRAIN_IMAGES = flags.DEFINE_integer("train_images", 2000, "Synthetic training images.")
VAL_IMAGES = flags.DEFINE_integer("val_images", 200, "Synthetic validation images.")
STEPS = flags.DEFINE_integer("steps", None, "Training steps (default: the experiment's schedule).")
OUTPUT = flags.DEFINE_string("output", None, "Output folder (default output/<user>/<experiment>).")
DEMO_IMAGES = flags.DEFINE_integer("demo_images", 4, "Validation images to draw detections on.")


def step(title, args, timings):
    print(f"\n=== {title}\n$ {' '.join(args)}", flush=True)
    start = time.time()
    subprocess.run([sys.executable, os.path.join(ROOT, args[0])] + args[1:], check=True)
    timings[title] = time.time() - start


def _exported_version(export_dir, model_dump):
    """The version folder under export_dir exported from model_dump's latest checkpoint, or None."""
    from lhrcnn.errors import MissingPathError
    from lhrcnn.paths import resolve_checkpoint
    try:
        latest = resolve_checkpoint(model_dump)  # what scripts/export.py exports from model_dump
    except MissingPathError:
        return None
    if not os.path.isdir(export_dir):
        return None
    for name in sorted(os.listdir(export_dir), key=lambda n: int(n) if n.isdigit() else -1, reverse=True):
        info = os.path.join(export_dir, name, "assets.extra", "export_info.json")
        if name.isdigit() and os.path.isfile(info):
            with open(info) as f:
                if json.load(f).get("checkpoint") == os.path.abspath(latest):
                    return os.path.join(export_dir, name)
    return None


def _extends_synthetic_base(config_class):
    """True when config_class or a class it extends is defined in a folder named synthetic.base."""
    for cls in config_class.__mro__:
        path = getattr(sys.modules.get(cls.__module__), "__file__", None) or ""
        if os.path.basename(os.path.dirname(os.path.abspath(path))) == "synthetic.base":
            return True
    return False


def synthetic_data_refusal(experiment, config_class):
    """None when the experiment is synthetic (its config extends synthetic.base, or its
    train_annotations lies under data/synthetic/ of the working directory or of the checkout);
    else the reason the main job does not run it, naming the folder it would write into."""
    from lhrcnn.paths import config_path
    annotations = os.path.normpath(config_path(config_class.train_annotations or "."))
    for base in {os.getcwd(), ROOT}:
        if annotations.startswith(os.path.join(os.path.abspath(base), "data", "synthetic") + os.sep):
            return None
    if _extends_synthetic_base(config_class):
        return None
    return (f"--experiment {experiment} is not a synthetic experiment (its train_annotations "
            f"{config_class.train_annotations} is not under data/synthetic/ and its config does not extend "
            f"synthetic.base): the main job would write synthetic images into {os.path.dirname(annotations)}; "
            f"train it with `lhrcnn train --experiment {experiment}` instead")


def main(argv):
    del argv
    from lhrcnn.config import load_config, load_config_class
    from lhrcnn.paths import config_path, experiment_output_dir
    experiment = EXPERIMENT.value if flags.FLAGS["experiment"].present else os.path.join(ROOT, EXPERIMENT.value)
    try:
        refusal = synthetic_data_refusal(experiment, load_config_class(experiment))
        config = None if refusal else load_config(experiment)
    except (FileNotFoundError, ValueError) as e:
        refusal = f"{experiment}: {e}"
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        sys.exit(1)
    output = OUTPUT.value or experiment_output_dir(config, experiment)
    train_dir = os.path.dirname(config_path(config.train_annotations))
    val_dir = os.path.dirname(config_path(config.eval_annotations))
    timings, started = {}, time.time()
    step("synthetic training set", ["scripts/make_synthetic_dataset.py", "--output", train_dir,
                                    "--num-images", str(TRAIN_IMAGES.value), "--seed", "1"], timings)
    step("synthetic validation set", ["scripts/make_synthetic_dataset.py", "--output", val_dir,
                                      "--num-images", str(VAL_IMAGES.value), "--seed", "2"], timings)
    train = ["scripts/train.py", "--experiment", experiment, "--output", output]
    if STEPS.value:
        train += ["--steps", str(STEPS.value)]
    step("train", train, timings)
    model_dump = os.path.join(output, "model_dump")
    step("evaluate (COCO mAP on the validation set)",
         ["scripts/test.py", "--experiment", experiment, "--checkpoint", model_dump,
          "--output", os.path.join(output, "eval_dump")], timings)
    with open(config_path(config.eval_annotations)) as f:
        names = [img["file_name"] for img in json.load(f)["images"][:DEMO_IMAGES.value]]
    images = [os.path.join(config_path(config.eval_images), n) for n in names]
    step("draw detections", ["scripts/demo.py", "--experiment", experiment, "--checkpoint", model_dump,
                             "--output", os.path.join(output, "demo")] + images, timings)
    export_dir = os.path.join(output, "export")
    exported = _exported_version(export_dir, model_dump)
    if exported:
        print(f"\n=== SavedModel export\nalready exported: {exported} (this checkpoint)")
    else:
        step("SavedModel export", ["scripts/export.py", "--experiment", experiment, "--checkpoint", model_dump,
                                   "--output", export_dir], timings)
        exported = _exported_version(export_dir, model_dump)
    with open(os.path.join(output, "eval_dump", "metrics.json")) as f:
        metrics = json.load(f)
    print("\n=== result")
    print(f"experiment {experiment}; outputs in {output}")
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"):
        print(f"  {name:6s} {metrics[name]:.3f}")
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
          + f"; total {time.time() - started:.0f} s")
    print(f"SavedModel for TF Serving: {exported}")


if __name__ == "__main__":
    app.run(main)
