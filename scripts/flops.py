"""Multiply-adds (the papers' FLOPs) and parameters of a backbone or of an experiment's detector,
counted on the built Keras graph (the same code and flags as `lhrcnn flops`; see lhrcnn/cli.py):

  python scripts/flops.py --backbone NAME [--input 224x224] [--detection] [--json FILE]
  python scripts/flops.py --experiment DIR [--input HxW] [--set FIELD=VALUE ...] [--json FILE]

--backbone: the ImageNet-classification form (global pool + fc 1000) at 224x224 by default, the form
of the papers' figures; --detection counts the detection form (features only) instead.
--experiment: the whole detector in inference (its test-time proposals through the R-CNN head) at
the experiment's eval short side, square, unless --input is given; --set overrides config fields
(Python literals, else strings, e.g. --set class_specific_regression=False
--set test_rpn_post_nms_top_n=300).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lhrcnn import cli  # noqa: E402

cli.define_absl_flags("flops")
main = cli.absl_main("flops")

if __name__ == "__main__":
    cli.run_script(main)
