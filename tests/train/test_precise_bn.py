"""Precise BN: after recompute_batch_norm_statistics, every trained BN's moving statistics are the
plain average of the batch statistics (NumPy), frozen BNs and trainable weights are untouched, and
the momentum attributes are restored."""
import numpy as np
import tensorflow as tf

from lhrcnn.backbones.layers import ConvBN
from lhrcnn.keras import keras
from lhrcnn.train.precise_bn import recompute_batch_norm_statistics, trained_batch_norms


class _Tiny(keras.Model):
    def __init__(self):
        super().__init__()
        self.frozen = ConvBN(4, 1, bn_frozen=True, name="frozen")
        self.conv = ConvBN(5, 1, bn_frozen=False, bn_momentum=0.99, name="trained")
        self.bn = keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-5, name="bn")

    def call(self, x, training=False):
        return self.bn(self.conv(self.frozen(x), training=training), training=training)

    def compute_losses(self, batch, training=True):
        y = self(batch["images"], training=training)
        return {"total": tf.reduce_mean(tf.square(y))}


def test_moving_statistics_become_the_average_of_batch_statistics():
    rng = np.random.default_rng(0)
    model = _Tiny()
    model(tf.zeros([1, 3, 3, 2]))
    batches = [rng.normal(2.0, 3.0, (2, 5, 6, 2)).astype(np.float32) * (1 + i) for i in range(4)]
    frozen_before = [v.numpy() for v in model.frozen.weights]
    trainable_before = [v.numpy() for v in model.trainable_weights]
    assert len(trained_batch_norms(model)) == 2

    data = tf.data.Dataset.from_tensor_slices({"images": np.stack(batches)})
    n = recompute_batch_norm_statistics(model, iter(data), 4)
    assert n == 2

    # NumPy reference: the frozen layer folds its (initial) statistics; the trained ConvBN's batch
    # statistics of its conv output; the Keras BN's batch statistics of the normalised output.
    f_kernel, f_gamma, f_beta, f_mean, f_var = frozen_before
    k = model.conv.kernel.numpy()[0, 0]
    gamma, beta = model.conv.gamma.numpy(), model.conv.beta.numpy()
    means, variances, means2, variances2 = [], [], [], []
    for b in batches:
        scale = f_gamma / np.sqrt(f_var + model.frozen.bn_epsilon)
        x = b @ f_kernel[0, 0] * scale + (f_beta - f_mean * scale)
        y = (x @ k).reshape(-1, 5)
        means.append(y.mean(0))
        variances.append(y.var(0, ddof=1))  # fused BN's moving variance is Bessel-corrected
        z = (y - y.mean(0)) / np.sqrt(y.var(0) + model.conv.bn_epsilon) * gamma + beta
        means2.append(z.mean(0))
        variances2.append(z.var(0, ddof=1))
    np.testing.assert_allclose(model.conv.moving_mean.numpy(), np.mean(means, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.conv.moving_variance.numpy(), np.mean(variances, 0), rtol=1e-4)
    np.testing.assert_allclose(model.bn.moving_mean.numpy(), np.mean(means2, 0), atol=1e-4)
    np.testing.assert_allclose(model.bn.moving_variance.numpy(), np.mean(variances2, 0), rtol=1e-3)
    for v, w in zip(model.frozen.weights, frozen_before):
        np.testing.assert_array_equal(v.numpy(), w)
    for v, w in zip(model.trainable_weights, trainable_before):
        np.testing.assert_array_equal(v.numpy(), w)
    assert model.conv.bn_momentum == 0.99 and model.bn.momentum == 0.99
