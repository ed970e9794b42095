"""Precise BatchNorm statistics: recompute every trained BN's moving mean and variance as the
plain average, over N training batches, of the batch statistics the current weights produce.

Why: a BN's moving averages are an EMA over past steps, computed with past weights. When the
weights move fast (from-scratch training, Adam, a high LR) the EMA lags behind them and the
inference-mode network (which uses the moving statistics) is much worse than the training-mode one;
measured on the synthetic Xception* Light-Head after 400 Adam steps: inference-mode loss 2.13 vs 0.33 in
training mode, 0.39 after this recalibration. (Detectron2's and pycls' `PreciseBN` do the same.)

Frozen BNs (the original's ImageNet-initialised backbones) have no batch statistics and are left
alone; only the moving statistics change, never a trainable weight.
"""
import numpy as np
import tensorflow as tf

from lhrcnn.backbones.layers import ConvBN
from lhrcnn.keras import keras


def trained_batch_norms(model):
    """[(layer, momentum attribute name)] of the BN layers that use batch statistics in training."""
    found = []
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, ConvBN):
            if not layer.bn_frozen and layer.trainable:
                found.append((layer, "bn_momentum"))
        elif isinstance(layer, keras.layers.BatchNormalization):
            if layer.trainable:
                found.append((layer, "momentum"))
    return found


def recompute_batch_norm_statistics(detector, batches, num_batches, strategy=None):
    """Sets the moving statistics of every trained BN in `detector` to the average of the batch
    statistics over `num_batches` batches of `batches` (an iterator of per-replica batches as the
    trainer feeds them, or of plain batch dicts). Returns the number of BN layers updated."""
    strategy = strategy or tf.distribute.get_strategy()
    layers = trained_batch_norms(detector)
    if not layers or num_batches <= 0:
        return 0
    saved = [getattr(layer, attr) for layer, attr in layers]
    try:
        for layer, attr in layers:  # momentum 0: after a pass, moving = that batch's statistics
            setattr(layer, attr, 0.0)

        @tf.function(autograph=False)
        def forward(iterator):
            strategy.run(lambda batch: detector.compute_losses(batch, training=True)["total"],
                         args=(next(iterator),))

        sums = [[np.zeros(layer.moving_mean.shape, np.float64), np.zeros(layer.moving_variance.shape, np.float64)]
                for layer, _ in layers]
        for _ in range(num_batches):
            forward(batches)
            for total, (layer, _) in zip(sums, layers):
                total[0] += layer.moving_mean.numpy()
                total[1] += layer.moving_variance.numpy()
        for total, (layer, _) in zip(sums, layers):
            layer.moving_mean.assign((total[0] / num_batches).astype(layer.moving_mean.dtype.as_numpy_dtype))
            layer.moving_variance.assign((total[1] / num_batches).astype(layer.moving_variance.dtype.as_numpy_dtype))
    finally:
        for (layer, attr), value in zip(layers, saved):
            setattr(layer, attr, value)
    return len(layers)
