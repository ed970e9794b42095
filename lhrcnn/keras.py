"""The single Keras import point of lhrcnn: tf-keras (Keras 2). Every other module does
`from lhrcnn.keras import keras`, so moving to another Keras is a change of this file alone."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tf_keras as keras  # noqa: E402

__all__ = ["keras"]
