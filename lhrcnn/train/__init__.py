"""Training: the learning-rate schedule, checkpoints and the distributed training loop."""
