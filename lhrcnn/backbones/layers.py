"""Building blocks shared by the slim-compatible backbones: frozen BatchNorm and `conv2d_same`.

Both reproduce TF1 slim semantics exactly, so TF1 checkpoints load without numeric drift:

- `FrozenBatchNormalization` is slim's `batch_norm(is_training=False, trainable=False)`: it always
  normalises with the moving statistics, also when the model is called with `training=True`, and
  its variables are not trainable.
- `conv2d_same` is slim's `resnet_utils.conv2d_same`: a stride-1 convolution uses TF `SAME`
  padding (with dilation), a strided one pads explicitly and symmetrically
  (`pad_total = k_eff - 1`, `pad_beg = pad_total // 2`) and then convolves `VALID`. For an even
  input this differs from TF `SAME` with a stride, which pads bottom/right only.
"""
from lhrcnn.keras import keras

# slim's resnet_arg_scope: batch_norm_decay 0.997, epsilon 1e-5, scale and center on.
DEFAULT_BN_MOMENTUM = 0.997
DEFAULT_BN_EPSILON = 1e-5


@keras.utils.register_keras_serializable(package="lhrcnn")
class FrozenBatchNormalization(keras.layers.BatchNormalization):
    """BatchNorm that always runs in inference mode and is not trainable by default.

    `y = gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta`, whatever the
    `training` argument: moving statistics are never updated. Setting `trainable=True` later makes
    gamma and beta trainable but keeps inference-mode normalisation (a "frozen statistics" BN).
    Inputs and outputs: `[..., C] float32`.
    """

    def __init__(self, trainable=False, **kwargs):
        super().__init__(trainable=trainable, **kwargs)

    def call(self, inputs, training=None):
        del training  # always inference mode: moving statistics, no updates
        return super().call(inputs, training=False)


def batch_norm(name, *, frozen, epsilon=DEFAULT_BN_EPSILON, momentum=DEFAULT_BN_MOMENTUM):
    """A BatchNorm layer (scale and center on) over the channel axis of NHWC features.

    frozen=True gives a `FrozenBatchNormalization` (inference mode always, not trainable),
    frozen=False an ordinary trainable Keras BatchNormalization.
    """
    cls = FrozenBatchNormalization if frozen else keras.layers.BatchNormalization
    return cls(axis=-1, momentum=momentum, epsilon=epsilon, center=True, scale=True, name=name)


def he_normal_slim():
    """slim's `variance_scaling_initializer()` (factor 2, fan-in, truncated normal)."""
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_in",
                                              distribution="truncated_normal")


def conv2d_same(x, filters, kernel_size, *, stride=1, rate=1, name, trainable=True,
                use_bias=False):
    """slim `conv2d_same`: `[B, H, W, Cin]` → `[B, ceil(H/stride), ceil(W/stride), filters]`.

    Stride 1: one `Conv2D(padding='same', dilation_rate=rate)` named `name`.
    Stride > 1: `ZeroPadding2D` named `{name}_pad` (pad_beg = (k_eff - 1) // 2 before, the rest
    after, on both spatial axes) followed by `Conv2D(padding='valid', strides=stride)` named `name`.
    The kernel is HWIO `[k, k, Cin, filters]`, as in slim checkpoints. No activation, no bias by
    default (BN follows).
    """
    conv_kwargs = dict(use_bias=use_bias, kernel_initializer=he_normal_slim(),
                       trainable=trainable, name=name)
    if stride == 1:
        return keras.layers.Conv2D(filters, kernel_size, strides=1, padding="same",
                                   dilation_rate=rate, **conv_kwargs)(x)
    kernel_size_effective = kernel_size + (kernel_size - 1) * (rate - 1)
    pad_total = kernel_size_effective - 1
    pad_beg = pad_total // 2
    pad_end = pad_total - pad_beg
    x = keras.layers.ZeroPadding2D(((pad_beg, pad_end), (pad_beg, pad_end)), name=f"{name}_pad")(x)
    return keras.layers.Conv2D(filters, kernel_size, strides=stride, padding="valid",
                               dilation_rate=rate, **conv_kwargs)(x)


def conv1x1(x, filters, *, stride=1, name, trainable=True):
    """slim `conv2d(x, filters, [1, 1], stride, padding='SAME')` without bias or activation.

    For a 1x1 kernel TF `SAME` never pads: the output keeps pixels 0, s, 2s, ... (`ceil(H/s)`).
    """
    return keras.layers.Conv2D(filters, 1, strides=stride, padding="same", use_bias=False,
                               kernel_initializer=he_normal_slim(), trainable=trainable,
                               name=name)(x)



def attach_feature_info(model, strides, channels):
    """Set `model.feature_strides` and `model.feature_channels` to plain dicts (feature → int).

    Assigned with `object.__setattr__` so Keras does not wrap them in trackable `_DictWrapper`s
    (which are not JSON-serialisable and would become checkpoint dependencies).
    """
    object.__setattr__(model, "feature_strides", dict(strides))
    object.__setattr__(model, "feature_channels", dict(channels))
    return model
