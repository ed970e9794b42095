"""Trains an experiment (the same code and flags as `lhrcnn train`; see lhrcnn/cli.py):

  python scripts/train.py --experiment DIR [--init-checkpoint PATH] [--steps N] [--output DIR]
                          [--checkpoint-every 500 (steps)] [--log-every 10 (seconds)]
                          [--summary-every N (steps)] [--eval-every N (steps; 0 = off)]
                          [--eval-annotations FILE] [--eval-images DIR] [--eval-images-to-draw 4]
                          [--strategy auto|one_device|mirrored|multi_worker] [--num-gpus N]
                          [--cpu-replicas N] [--communication auto|ring|nccl]
                          [--set FIELD=VALUE ...] [--verbose]

Outputs go to output/<user>/<experiment>/ (or --output): model_dump/ (checkpoints),
tensorboard/. A restart resumes from the latest checkpoint in model_dump/ (same step, learning rate
and data position). --eval-every N evaluates on the eval set (the config's, or --eval-annotations
and --eval-images) every N steps and after the last one. --set overrides config fields (Python
literals, else strings).

--strategy: `auto` (default) trains multi-worker when TF_CONFIG names a cluster, mirrored when
several GPUs are visible, on one device otherwise. Each replica takes `train_batch_per_gpu` images
of the experiment; the global batch is that x replicas and the learning rate basic_lr x replicas.
Multi-worker: run the same command on every node with its own TF_CONFIG; model_dump/ must be on a
filesystem all of them reach (only the chief writes there). See docs/cluster.md.

--init-checkpoint takes a TF2 checkpoint (another run's, or one written by scripts/convert_tf1.py)
or a TF1 one directly: a slim ImageNet checkpoint (resnet_v1_101.ckpt; initialises the backbone,
as the original's `weight` config field) or a checkpoint of the original code (the whole
detector), mapped through the name tables of lhrcnn/convert/tf1.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lhrcnn import cli  # noqa: E402

cli.define_absl_flags("train")
main = cli.absl_main("train")

if __name__ == "__main__":
    cli.run_script(main)
