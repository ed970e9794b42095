"""The single Keras import point of lhrcnn: tf-keras (Keras 2). See shared/DESIGN.md §1."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tf_keras as keras  # noqa: E402

__all__ = ["keras"]
