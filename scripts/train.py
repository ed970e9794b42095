"""Trains an experiment:

  python scripts/train.py --experiment DIR [--init-checkpoint PATH] [--steps N] [--output DIR]
                          [--checkpoint-every 500] [--log-every 10]

Outputs go to output/<user>/<experiment>/ (or --output): model_dump/ (checkpoints),
tensorboard/. A restart resumes from the latest checkpoint in model_dump/.
"""
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EXPERIMENT = flags.DEFINE_string("experiment", None, "Experiment folder (config.py + network_desp.py).", required=True)
INIT = flags.DEFINE_string("init_checkpoint", None, "TF2 checkpoint (prefix or folder) to initialise the model from "
                           "when the run has no checkpoint of its own.")
STEPS = flags.DEFINE_integer("steps", None, "Total steps (default: the config's schedule).")
OUTPUT = flags.DEFINE_string("output", None, "Output folder (default output/<user>/<experiment>).")
CKPT_EVERY = flags.DEFINE_integer("checkpoint_every", 500, "Steps between checkpoints.")
LOG_EVERY = flags.DEFINE_float("log_every", 10.0, "Seconds between progress lines.")


def main(argv):
    del argv
    from lhrcnn.train.trainer import Trainer
    if not os.path.isdir(EXPERIMENT.value):
        raise app.UsageError(f"experiment folder {EXPERIMENT.value} does not exist")
    trainer = Trainer(EXPERIMENT.value, output_dir=OUTPUT.value, init_checkpoint=INIT.value, total_steps=STEPS.value,
                      checkpoint_every=CKPT_EVERY.value, log_every_seconds=LOG_EVERY.value)
    trainer.train()


if __name__ == "__main__":
    app.run(main)
