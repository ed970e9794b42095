"""Trains an experiment:

  python scripts/train.py --experiment DIR [--init-checkpoint PATH] [--steps N] [--output DIR]
                          [--checkpoint-every 500] [--log-every 10]
                          [--strategy auto|one_device|mirrored|multi_worker] [--num_gpus N]
                          [--cpu_replicas N] [--communication auto|ring|nccl]

Outputs go to output/<user>/<experiment>/ (or --output): model_dump/ (checkpoints),
tensorboard/. A restart resumes from the latest checkpoint in model_dump/ (same step, learning rate
and data position).

--strategy: `auto` (default) trains multi-worker when TF_CONFIG names a cluster, mirrored when
several GPUs are visible, on one device otherwise. Each replica takes `train_batch_per_gpu` images
of the experiment; the global batch is that x replicas and the learning rate basic_lr x replicas.
Multi-worker: run the same command on every node with its own TF_CONFIG; model_dump/ must be on a
filesystem all of them reach (only the chief writes there). See README, "Training on a cluster".

--init-checkpoint takes a TF2 checkpoint (another run's, or one written by scripts/convert_tf1.py)
or a TF1 one directly: a slim ImageNet checkpoint (resnet_v1_101.ckpt; initialises the backbone,
as the original's `weight` config field) or a checkpoint of the original code (the whole
detector), mapped through the name tables of lhrcnn/convert/tf1.py.
"""
import logging
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
STRATEGY = flags.DEFINE_enum("strategy", "auto", ["auto", "one_device", "mirrored", "multi_worker"],
                             "tf.distribute strategy (auto: multi_worker with a TF_CONFIG cluster, mirrored with "
                             "several GPUs, else one device).")
NUM_GPUS = flags.DEFINE_integer("num_gpus", None, "mirrored: use GPUs 0..N-1 (default: all visible).")
CPU_REPLICAS = flags.DEFINE_integer("cpu_replicas", None, "mirrored without GPUs: split the CPU into N logical "
                                    "devices (one replica each; for tests and benchmarks).")
COMMUNICATION = flags.DEFINE_enum("communication", "auto", ["auto", "ring", "nccl"],
                                  "multi_worker all-reduce implementation.")
flags.DEFINE_alias("init-checkpoint", "init_checkpoint")
flags.DEFINE_alias("num-gpus", "num_gpus")
flags.DEFINE_alias("cpu-replicas", "cpu_replicas")
flags.DEFINE_alias("checkpoint-every", "checkpoint_every")
flags.DEFINE_alias("log-every", "log_every")


class _QuietCollectiveTracing(logging.Filter):
    """Drops TF's one-line-per-collective INFO messages logged while the step is traced."""

    def filter(self, record):
        return "Collective all_reduce tensors" not in record.getMessage()


def main(argv):
    del argv
    logging.getLogger("tensorflow").addFilter(_QuietCollectiveTracing())
    from lhrcnn.convert import tf1
    from lhrcnn.paths import resolve_checkpoint
    from lhrcnn.train.trainer import Trainer
    if not os.path.isdir(EXPERIMENT.value):
        raise app.UsageError(f"experiment folder {EXPERIMENT.value} does not exist")
    init, tf1_init = INIT.value, None
    if init:
        try:
            if tf1.is_tf1_checkpoint(init):  # name-based: mapped through the table below, not restored by object
                tf1_init, init = resolve_checkpoint(init), None
        except FileNotFoundError as e:
            sys.exit(f"error: --init-checkpoint: {e}")
    from lhrcnn.train.distribute import make_strategy
    try:
        strategy = make_strategy(STRATEGY.value, num_gpus=NUM_GPUS.value, cpu_replicas=CPU_REPLICAS.value,
                                 communication=COMMUNICATION.value)
    except ValueError as e:
        sys.exit(f"error: --strategy {STRATEGY.value}: {e}")
    trainer = Trainer(EXPERIMENT.value, output_dir=OUTPUT.value, init_checkpoint=init, total_steps=STEPS.value,
                      checkpoint_every=CKPT_EVERY.value, log_every_seconds=LOG_EVERY.value, strategy=strategy)
    if tf1_init:
        if trainer.checkpoints.latest():
            print(f"the run resumes from {trainer.checkpoints.latest()}; "
                  f"--init-checkpoint {tf1_init} is not used", flush=True)
        else:
            try:
                report = tf1.load_tf1_checkpoint(trainer.detector, tf1_init)
            except ValueError as e:
                sys.exit(f"error: --init-checkpoint: {e}")
            print(report.summary(), flush=True)
    try:
        trainer.train()
    except RuntimeError as e:  # a lost worker: the message says how to resume
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
