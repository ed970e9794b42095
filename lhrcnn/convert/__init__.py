"""Checkpoint conversion: TF1 checkpoints of the original code (and the slim ImageNet ones) into
lhrcnn's TF2 checkpoints through explicit name tables (lhrcnn/convert/tf1.py)."""
