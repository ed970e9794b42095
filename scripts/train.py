"""Trains an experiment:

  python scripts/train.py --experiment DIR [--init-checkpoint PATH] [--steps N] [--output DIR]
                          [--checkpoint-every 500] [--log-every 10]

Outputs go to output/<user>/<experiment>/ (or --output): model_dump/ (checkpoints),
tensorboard/. A restart resumes from the latest checkpoint in model_dump/.

--init-checkpoint takes a TF2 checkpoint (another run's, or one written by scripts/convert_tf1.py)
or a TF1 one directly: a slim ImageNet checkpoint (resnet_v1_101.ckpt; initialises the backbone,
as the original's `weight` config field) or a checkpoint of the original code (the whole
detector), mapped through the name tables of lhrcnn/convert/tf1.py.
"""
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EXPERIMENT = flags.DEFINE_string("experiment", None, "Experiment folder (config.py + network_desp.py).", required=True)
INIT = flags.DEFINE_string("init_checkpoint", None, "Checkpoint (prefix or folder) to initialise the model from when "
                           "the run has no checkpoint of its own: TF2, or TF1 (a slim ImageNet checkpoint initialises "
                           "the backbone; one of the original code the whole detector).")
STEPS = flags.DEFINE_integer("steps", None, "Total steps (default: the config's schedule).")
OUTPUT = flags.DEFINE_string("output", None, "Output folder (default output/<user>/<experiment>).")
CKPT_EVERY = flags.DEFINE_integer("checkpoint_every", 500, "Steps between checkpoints.")
LOG_EVERY = flags.DEFINE_float("log_every", 10.0, "Seconds between progress lines.")
flags.DEFINE_alias("init-checkpoint", "init_checkpoint")
flags.DEFINE_alias("checkpoint-every", "checkpoint_every")
flags.DEFINE_alias("log-every", "log_every")


def main(argv):
    del argv
    from lhrcnn.convert import tf1
    from lhrcnn.train.trainer import Trainer
    if not os.path.isdir(EXPERIMENT.value):
        raise app.UsageError(f"experiment folder {EXPERIMENT.value} does not exist")
    init, tf1_init = INIT.value, None
    if init:
        try:
            if tf1.is_tf1_checkpoint(init):  # name-based: mapped through the table below, not restored by object
                tf1_init, init = tf1.resolve_checkpoint(init), None
        except FileNotFoundError as e:
            sys.exit(f"error: --init-checkpoint: {e}")
    trainer = Trainer(EXPERIMENT.value, output_dir=OUTPUT.value, init_checkpoint=init, total_steps=STEPS.value,
                      checkpoint_every=CKPT_EVERY.value, log_every_seconds=LOG_EVERY.value)
    if tf1_init:
        if trainer.checkpoints.manager.latest_checkpoint:
            print(f"the run resumes from {trainer.checkpoints.manager.latest_checkpoint}; "
                  f"--init-checkpoint {tf1_init} is not used", flush=True)
        else:
            try:
                report = tf1.load_tf1_checkpoint(trainer.detector, tf1_init)
            except ValueError as e:
                sys.exit(f"error: --init-checkpoint: {e}")
            print(report.summary(), flush=True)
    trainer.train()


if __name__ == "__main__":
    app.run(main)
