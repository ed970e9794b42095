"""Converts a TF1 checkpoint of the original code (or a slim ImageNet checkpoint) to a TF2 checkpoint
of an experiment's detector, through the explicit name tables of lhrcnn/convert/tf1.py:

  python scripts/convert_tf1.py --checkpoint PREFIX --experiment DIR --output DIR
                                [--weights raw|ema] [--part auto|detector|backbone]

PREFIX is a TF1 checkpoint prefix (e.g. output/<user>/<exp>/model_dump/epoch_26.ckpt, read
through its .index), a V1 single-file checkpoint (resnet_v1_101.ckpt) or a folder with a
`checkpoint` file. The output folder receives converted-0.{index,data-*}, a `checkpoint` file and
conversion.json; it is written to a temporary folder and renamed, so it is complete or absent.
A detector checkpoint gives a checkpoint that `scripts/test.py --checkpoint DIR` evaluates; an
ImageNet checkpoint (it has `logits`) gives a backbone-only one for
`scripts/train.py --init-checkpoint DIR`. Any variable without a source, tensor of the wrong
shape or name the table does not know is an error that lists them; nothing is written then.
"""
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CHECKPOINT = flags.DEFINE_string("checkpoint", None, "TF1 checkpoint: prefix, V1 file, or folder with a "
                                 "`checkpoint` file.")
EXPERIMENT = flags.DEFINE_string("experiment", None, "Experiment folder (config.py + network_desp.py) whose "
                                 "detector receives the weights.")
OUTPUT = flags.DEFINE_string("output", None, "Folder to write the TF2 checkpoint to (must not exist or be empty).")
WEIGHTS = flags.DEFINE_enum("weights", "raw", ["raw", "ema"], "raw: the trained weights (what the original's "
                            "test.py evaluates); ema: each trainable tensor from its /ExponentialMovingAverage shadow.")
PART = flags.DEFINE_enum("part", "auto", ["auto", "detector", "backbone"], "What to convert: the whole detector, "
                         "the backbone only, or auto (backbone for an ImageNet checkpoint, which holds `logits`).")
for _name in ("checkpoint", "experiment", "output"):
    flags.mark_flag_as_required(_name)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not os.path.isdir(EXPERIMENT.value):
        sys.exit(f"error: experiment folder {EXPERIMENT.value} does not exist")
    from lhrcnn.convert import tf1
    try:
        prefix, report = tf1.convert(CHECKPOINT.value, EXPERIMENT.value, OUTPUT.value, weights=WEIGHTS.value,
                                     part=PART.value)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(report.summary())
    use = ("scripts/test.py --experiment {e} --checkpoint {o}" if report.part == "detector"
           else "scripts/train.py --experiment {e} --init-checkpoint {o}")
    print(f"wrote {prefix} (and {os.path.join(OUTPUT.value, tf1.REPORT_FILE)}); use it with "
          + use.format(e=EXPERIMENT.value, o=OUTPUT.value))


if __name__ == "__main__":
    app.run(main)
