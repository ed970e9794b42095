"""Converts a TF1 checkpoint of the original code (or a slim ImageNet checkpoint) to a TF2 checkpoint
of an experiment's detector, through the explicit name tables of lhrcnn/convert/tf1.py (the same
code and flags as `lhrcnn convert`; see lhrcnn/cli.py):

  python scripts/convert_tf1.py --checkpoint PREFIX --experiment DIR --output DIR
                                [--weights raw|ema] [--part auto|detector|backbone] [--verbose]

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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lhrcnn import cli  # noqa: E402

cli.define_absl_flags("convert")
main = cli.absl_main("convert")

if __name__ == "__main__":
    cli.run_script(main)
