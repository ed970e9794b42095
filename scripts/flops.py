"""Multiply-adds (the papers' FLOPs) and parameters of a backbone or of an experiment's detector,
counted on the built Keras graph:

  python scripts/flops.py --backbone NAME [--input 224x224] [--detection]
  python scripts/flops.py --experiment DIR [--input HxW] [--set FIELD=VALUE ...]

--backbone: the ImageNet-classification form (global pool + fc 1000) at 224x224 by default, the form
of the papers' figures; --detection counts the detection form (features only) instead.
--experiment: the whole detector in inference (its test-time proposals through the R-CNN head) at
the experiment's eval short side, square, unless --input is given; --set overrides config fields
(Python literals, e.g. --set class_specific_regression=False --set test_rpn_post_nms_top_n=300).
"""
import ast
import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BACKBONE = flags.DEFINE_string("backbone", None, "Backbone name (lhrcnn.backbones.BACKBONE_NAMES).")
EXPERIMENT = flags.DEFINE_string("experiment", None, "Experiment folder.")
INPUT = flags.DEFINE_string("input", None, "HxW (default 224x224 for a backbone, the eval size for an experiment).")
DETECTION = flags.DEFINE_boolean("detection", False, "Count the backbone's detection form, not the classifier.")
JSON = flags.DEFINE_string("json", None, "Also write the numbers to this json file.")
SET = flags.DEFINE_multi_string("set", [], "FIELD=VALUE config override of --experiment (a Python literal).")


def _overrides(items):
    out = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise app.UsageError(f"--set must be FIELD=VALUE, got {item!r}")
        try:
            out[field.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise app.UsageError(f"--set {item}: the value must be a Python literal") from None
    return out


def _size(text):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise app.UsageError(f"--input must be HxW (e.g. 320x320), got {text!r}") from None
    if h < 32 or w < 32:
        raise app.UsageError(f"--input {text}: both sides must be >= 32")
    return h, w


def main(argv):
    del argv
    if bool(BACKBONE.value) == bool(EXPERIMENT.value):
        raise app.UsageError("give exactly one of --backbone NAME or --experiment DIR")
    if SET.value and not EXPERIMENT.value:
        raise app.UsageError("--set applies to --experiment only")
    from lhrcnn import flops
    from lhrcnn.backbones import BACKBONE_NAMES
    if BACKBONE.value:
        if BACKBONE.value not in BACKBONE_NAMES:
            sys.exit(f"error: unknown backbone {BACKBONE.value!r}; known: {', '.join(BACKBONE_NAMES)}")
        h, w = _size(INPUT.value or "224x224")
        result = flops.backbone_complexity(BACKBONE.value, h, w, for_classification=not DETECTION.value)
        what = f"{BACKBONE.value} ({'detection features' if DETECTION.value else 'ImageNet classifier'})"
    else:
        if not os.path.isfile(os.path.join(EXPERIMENT.value, "config.py")):
            sys.exit(f"error: {EXPERIMENT.value}/config.py does not exist")
        h, w = _size(INPUT.value) if INPUT.value else (None, None)
        try:
            result = flops.detector_complexity(EXPERIMENT.value, h, w, **_overrides(SET.value))
        except ValueError as e:  # unknown or invalid config field
            sys.exit(f"error: {e}")
        what = f"detector {result['name']} ({result['rois']} RoIs)"
    print(f"{what} at {result['input']}: {result['macs'] / 1e6:.1f} M multiply-adds, "
          f"{result['parameters'] / 1e6:.2f} M parameters ({result['trainable_parameters'] / 1e6:.2f} M trainable)")
    if "backbone_macs" in result:
        print(f"  backbone {result['backbone_macs'] / 1e6:.1f} M, the rest {(result['macs'] - result['backbone_macs']) / 1e6:.1f} M")
    print("  by op: " + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in sorted(result["by_op"].items())))
    if result["unknown"]:
        print(f"  not counted (shape unknown until run time): {', '.join(result['unknown'][:5])}")
    if JSON.value:
        with open(JSON.value + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(JSON.value + ".tmp", JSON.value)


if __name__ == "__main__":
    app.run(main)
