"""Building blocks shared by the slim-compatible backbones: `ConvBN` (convolution + BatchNorm +
optional ReLU in one layer) and the slim defaults it reproduces.

`ConvBN` is slim's `conv2d(..., normalizer_fn=batch_norm)` (or `resnet_utils.conv2d_same`) with
TF1 semantics, so TF1 checkpoints load without numeric drift, computed the fast way: with frozen
statistics the BatchNorm is folded into the convolution's kernel and bias, so conv + BN + ReLU is
the Conv2D → BiasAdd → Relu chain that grappler fuses into one `_FusedConv2D`, also in a training
step (a separate FusedBatchNorm is not fused there: its gradient needs the convolution output).
"""
import tensorflow as tf

from lhrcnn.keras import keras

# slim's resnet_arg_scope: batch_norm_decay 0.997, epsilon 1e-5, scale and center on.
DEFAULT_BN_MOMENTUM = 0.997
DEFAULT_BN_EPSILON = 1e-5

PADDINGS = ("same", "slim_same")


def he_normal_slim():
    """slim's `variance_scaling_initializer()` (factor 2, fan-in, truncated normal)."""
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_in",
                                              distribution="truncated_normal")


def _pair(value, what):
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{what} must be a positive int or a pair of them, got {value!r}")
    return pair


@keras.utils.register_keras_serializable(package="lhrcnn")
class ConvBN(keras.layers.Layer):
    """Convolution without bias → BatchNorm (scale and center) → optional ReLU, as one layer.

    `[B, H, W, Cin]` → `[B, ceil(H/sh), ceil(W/sw), filters]` (NHWC, dtype of the input).

    Variables (created with `add_weight` directly under the layer, so they are named
    `<layer>/kernel:0`, `<layer>/gamma:0`, ...):

    | variable | shape | slim | trainable |
    |---|---|---|---|
    | `kernel` | `[kh, kw, Cin, filters]` (HWIO) | `<scope>/weights` | `conv_trainable` |
    | `gamma`, `beta` | `[filters]` | `<scope>/BatchNorm/gamma`, `beta` | `bn_trainable` |
    | `moving_mean`, `moving_variance` | `[filters]` | `<scope>/BatchNorm/moving_*` | never |

    The moving statistics are `ON_READ` variables aggregated by `MEAN` (as Keras BatchNorm), so
    each replica of a `tf.distribute` strategy updates its own copy and reads see the mean.
    `conv_trainable` and `bn_trainable` are attributes that may be changed after construction
    (e.g. `layer.bn_trainable = True` to fine-tune gamma and beta of a frozen-statistics BN); the
    layer's `trainable` flag switches all of them off at once, as for any Keras layer.

    Padding:
      "same": TF `SAME` (for a strided, even-sized input it pads bottom/right only).
      "slim_same": slim's `conv2d_same`. Stride 1: TF `SAME` (with dilation). Stride > 1: pad
        explicitly and symmetrically, `pad_total = k_eff - 1` (`k_eff = k + (k - 1)(rate - 1)`),
        `pad_beg = pad_total // 2` before and the rest after on each spatial axis, then convolve
        `VALID`. Output size `ceil(n / stride)` either way.

    Computation, `s = gamma / sqrt(moving_variance + bn_epsilon)`:
      - `bn_frozen` (statistics frozen), `training` falsy, or the layer's `trainable` flag off
        (as a Keras BatchNorm with `trainable=False` runs in inference mode): the BN is folded
        into the convolution, `y = conv(x, kernel * s) + (beta - moving_mean * s)`, then ReLU if
        `relu` (`Conv2D` + `BiasAdd` + `Relu`, which grappler fuses into one `_FusedConv2D`; a
        dilated convolution runs as space-to-batch + `Conv2D` + batch-to-space, as in Keras
        `Conv2D`). Moving statistics are never updated; gradients flow to the kernel and to
        gamma and beta.
      - otherwise (`training` true): `y = conv(x, kernel)` normalised with the batch mean and
        (biased) variance over `[B, H, W]`, scaled and shifted, ReLU if `relu`; the moving
        statistics are updated `moving = moving * momentum + batch * (1 - momentum)`, with the
        Bessel-corrected batch variance (`n / (n - 1)`, n = B·H·W) for `moving_variance`, as
        TF's fused BatchNorm (which slim used) does. With `bn_sync` set and several replicas in
        sync, the mean and variance are those of the global batch (sums all-reduced).
    """

    def __init__(self, filters, kernel_size, strides=1, dilation_rate=1, padding="same",
                 relu=False, conv_trainable=True, bn_frozen=True, bn_trainable=None,
                 bn_epsilon=DEFAULT_BN_EPSILON, bn_momentum=DEFAULT_BN_MOMENTUM, **kwargs):
        """`bn_trainable` (whether gamma and beta train) defaults to `not bn_frozen`."""
        super().__init__(**kwargs)
        if not isinstance(filters, int) or filters < 1:
            raise ValueError(f"ConvBN {self.name!r}: filters must be a positive int, "
                             f"got {filters!r}")
        if padding not in PADDINGS:
            raise ValueError(f"ConvBN {self.name!r}: padding must be one of {PADDINGS}, "
                             f"got {padding!r}")
        self.filters = filters
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.strides = _pair(strides, "strides")
        self.dilation_rate = _pair(dilation_rate, "dilation_rate")
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"ConvBN {self.name!r}: strides > 1 together with "
                             f"dilation_rate > 1 is not supported (strides={self.strides}, "
                             f"dilation_rate={self.dilation_rate})")
        self.padding = padding
        self.relu = bool(relu)
        self.conv_trainable = bool(conv_trainable)
        self.bn_frozen = bool(bn_frozen)
        self.bn_trainable = (not self.bn_frozen) if bn_trainable is None else bool(bn_trainable)
        self.bn_epsilon = float(bn_epsilon)
        self.bn_momentum = float(bn_momentum)
        # Synchronised BN (set by lhrcnn.train.distribute.enable_sync_batch_norm): with batch
        # statistics under a multi-replica strategy, mean and variance of the global batch.
        self.bn_sync = False
        self.input_spec = keras.layers.InputSpec(ndim=4)

    @property
    def explicit_padding(self):
        """`((top, bottom), (left, right))` padded before a `VALID` convolution, or None when
        the convolution pads `SAME` itself."""
        if self.padding != "slim_same" or max(self.strides) == 1:
            return None
        pads = []
        for k, rate in zip(self.kernel_size, self.dilation_rate):
            total = k + (k - 1) * (rate - 1) - 1
            pads.append((total // 2, total - total // 2))
        return tuple(pads)

    def build(self, input_shape):
        channels_in = input_shape[-1]
        if channels_in is None:
            raise ValueError(f"ConvBN {self.name!r}: the channel axis of the input must be "
                             f"known, got shape {input_shape}")
        channels_in = int(channels_in)
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels_in})
        # Created trainable (so a GradientTape watches them if the flags change later); which
        # of them `trainable_weights` lists is decided by conv_trainable and bn_trainable.
        common = dict(dtype=self.dtype, experimental_autocast=False)
        self.kernel = self.add_weight(
            name="kernel", shape=(*self.kernel_size, channels_in, self.filters),
            initializer=he_normal_slim(), trainable=True, **common)
        self.gamma = self.add_weight(name="gamma", shape=(self.filters,),
                                     initializer="ones", trainable=True, **common)
        self.beta = self.add_weight(name="beta", shape=(self.filters,),
                                    initializer="zeros", trainable=True, **common)
        statistics = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                          aggregation=tf.VariableAggregation.MEAN, **common)
        self.moving_mean = self.add_weight(name="moving_mean", shape=(self.filters,),
                                           initializer="zeros", **statistics)
        self.moving_variance = self.add_weight(name="moving_variance", shape=(self.filters,),
                                               initializer="ones", **statistics)
        super().build(input_shape)

    # ------------------------------------------------------------------------ trainability

    def _weights_with_trainability(self):
        if not self.built:
            return []
        return [(self.kernel, self.conv_trainable), (self.gamma, self.bn_trainable),
                (self.beta, self.bn_trainable), (self.moving_mean, False),
                (self.moving_variance, False)]

    @property
    def trainable_weights(self):
        if not self.trainable:
            return []
        return [v for v, trainable in self._weights_with_trainability() if trainable]

    @property
    def non_trainable_weights(self):
        return [v for v, trainable in self._weights_with_trainability()
                if not (trainable and self.trainable)]

    # ------------------------------------------------------------------------- computation

    def _conv(self, x, kernel):
        pads = self.explicit_padding
        if pads is not None:
            x = tf.pad(x, [[0, 0], list(pads[0]), list(pads[1]), [0, 0]])
        # tf.nn.convolution is tf.nn.conv2d without dilation; a dilated one goes through
        # space-to-batch (as Keras Conv2D), since CPU kernels without oneDNN have no dilated
        # Conv2D gradient.
        return tf.nn.convolution(x, tf.cast(kernel, x.dtype), strides=self.strides,
                                 padding="SAME" if pads is None else "VALID",
                                 dilations=self.dilation_rate)

    def _activation(self, y):
        return tf.nn.relu(y) if self.relu else y

    def _folded(self, x):
        scale = self.gamma * tf.math.rsqrt(self.moving_variance + self.bn_epsilon)
        bias = self.beta - self.moving_mean * scale
        y = tf.nn.bias_add(self._conv(x, self.kernel * scale), tf.cast(bias, x.dtype))
        return self._activation(y)

    def _sync_batch_norm(self, y, context):
        """Batch normalisation with the mean and variance of the global batch: per-channel sums
        of y and y² and the pixel count all-reduced over the replicas."""
        y32 = tf.cast(y, tf.float32)
        channels = y32.shape[-1]
        # One all-reduce for the differentiable sums (its gradient is the all-reduce of theirs),
        # one without gradient for the pixel count (replicas' images may differ in size).
        sums = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.concat(
            [tf.reduce_sum(y32, axis=[0, 1, 2]), tf.reduce_sum(tf.square(y32), axis=[0, 1, 2])], axis=0))
        count = tf.cast(tf.reduce_prod(tf.shape(y32)[:3]), tf.float32) * context.num_replicas_in_sync
        total, squares = sums[:channels], sums[channels:]
        mean = total / count
        variance = tf.maximum(squares / count - tf.square(mean), 0.0)
        # TF's fused BatchNorm (the one-replica path) raises epsilon to at least 1.001e-5
        scale = self.gamma * tf.math.rsqrt(variance + max(self.bn_epsilon, 1.001e-5))
        out = y32 * scale + (self.beta - mean * scale)
        unbiased = variance * count / tf.maximum(count - 1.0, 1.0)
        return tf.cast(out, y.dtype), mean, unbiased

    def _batch_statistics(self, x):
        y = self._conv(x, self.kernel)
        context = tf.distribute.get_replica_context()
        if self.bn_sync and context is not None and context.num_replicas_in_sync > 1:
            y, batch_mean, batch_variance = self._sync_batch_norm(y, context)
            decay = 1.0 - self.bn_momentum
            self.moving_mean.assign_sub((self.moving_mean - batch_mean) * decay)
            self.moving_variance.assign_sub((self.moving_variance - batch_variance) * decay)
            return self._activation(y)
        # batch_variance is Bessel-corrected by the op; the output is normalised with the
        # biased variance.
        y, batch_mean, batch_variance = tf.compat.v1.nn.fused_batch_norm(
            y, self.gamma, self.beta, epsilon=self.bn_epsilon, data_format="NHWC",
            is_training=True)
        decay = 1.0 - self.bn_momentum
        self.moving_mean.assign_sub((self.moving_mean - batch_mean) * decay)
        self.moving_variance.assign_sub((self.moving_variance - batch_variance) * decay)
        return self._activation(y)

    def call(self, inputs, training=None):
        if self.bn_frozen or not self.trainable:
            return self._folded(inputs)
        if isinstance(training, (tf.Tensor, tf.Variable)):
            static = tf.get_static_value(training)
            if static is None:
                return tf.cond(tf.cast(training, tf.bool),
                               lambda: self._batch_statistics(inputs),
                               lambda: self._folded(inputs))
            training = bool(static)
        return self._batch_statistics(inputs) if training else self._folded(inputs)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                      dilation_rate=self.dilation_rate, padding=self.padding, relu=self.relu,
                      conv_trainable=self.conv_trainable, bn_frozen=self.bn_frozen,
                      bn_trainable=self.bn_trainable, bn_epsilon=self.bn_epsilon,
                      bn_momentum=self.bn_momentum)
        return config


def attach_feature_info(model, strides, channels):
    """Set `model.feature_strides` and `model.feature_channels` to plain dicts (feature → int).

    Assigned with `object.__setattr__` so Keras does not wrap them in trackable `_DictWrapper`s
    (which are not JSON-serialisable and would become checkpoint dependencies).
    """
    object.__setattr__(model, "feature_strides", dict(strides))
    object.__setattr__(model, "feature_channels", dict(channels))
    return model


def check_width_divisor(width_divisor):
    """The backbones' `width_divisor` option: a positive integer dividing 64 (every width of the
    ResNet family is a multiple of 64)."""
    if isinstance(width_divisor, bool) or not isinstance(width_divisor, int) or width_divisor < 1 \
            or 64 % width_divisor:
        raise ValueError(f"width_divisor must be a positive integer dividing 64, got {width_divisor!r}")
    return width_divisor


def shortcut(x, depth, stride, shortcut_conv, name):
    """slim's residual shortcut: `x` itself (subsampled by a 1x1 max-pool when strided, slim
    `resnet_utils.subsample`) when its depth already is `depth`, else `shortcut_conv(x)` (the
    1x1/stride conv + BN named `{name}_shortcut`, built by the caller)."""
    if x.shape[-1] == depth:
        if stride > 1:  # never used by the configured networks
            return keras.layers.MaxPooling2D(1, strides=stride, padding="same", name=f"{name}_shortcut")(x)
        return x
    return shortcut_conv(x)
