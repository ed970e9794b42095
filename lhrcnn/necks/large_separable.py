"""The large separable convolution that makes Light-Head R-CNN's thin feature map
(docs/original.md#large-separable-convolution, the original's `global_context_module`): (k x 1 -> C_mid -> 1 x k -> C_out)
+ (1 x k -> C_mid -> k x 1 -> C_out), biases, no normalisation or activation inside, ReLU after
the sum."""
from lhrcnn.keras import keras


class LargeSeparableConv(keras.layers.Layer):
    """[B, H, W, C_in] -> [B, H, W, C_out] (SAME padding, stride 1).

    Args:
      kernel_size: k (15 for the R-101 model, 15 for Xception* too).
      mid_channels: C_mid (256 for R-101, 64 for Xception*).
      out_channels: C_out = G² x channels per bin (490 = 7 x 7 x 10).
      prefix: variable-name prefix; `conv_new_1` as in the original, so the x3 gradient
        multiplier on `conv_new*` applies and checkpoints map by name.
      kernel_initializer: None for the original's N(0, 0.01), or a Keras initializer name
        ("he_normal" keeps the thin map alive when the backbone is trained from scratch).
      norm: None (the original) or "batch": BatchNorm on the sum before the activation. Not in
        the original; a from-scratch backbone shifts the thin map's input so fast that its ReLU
        dies (all zeros) without it.
    """

    def __init__(self, kernel_size=15, mid_channels=256, out_channels=490, prefix="conv_new_1",
                 activation="relu", kernel_initializer=None, norm=None, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size, self.mid_channels, self.out_channels = kernel_size, mid_channels, out_channels
        self.prefix, self.activation = prefix, keras.activations.get(activation)
        self.kernel_initializer = kernel_initializer
        if norm not in (None, "batch"):
            raise ValueError(f"norm must be None or 'batch', got {norm!r}")
        self.norm = norm
        self.bn = keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-5, name=f"{prefix}_bn") if norm else None
        k = kernel_size

        def conv(name, channels, kernel):
            return keras.layers.Conv2D(channels, kernel, padding="same", use_bias=True,
                                       kernel_initializer=(keras.initializers.get(kernel_initializer)
                                                           if kernel_initializer else
                                                           keras.initializers.RandomNormal(stddev=0.01)),
                                       bias_initializer="zeros", name=f"{prefix}_conv15_{name}")
        self.w_pre = conv("w_pre", mid_channels, (k, 1))
        self.w = conv("w", out_channels, (1, k))
        self.h_pre = conv("h_pre", mid_channels, (1, k))
        self.h = conv("h", out_channels, (k, 1))

    def call(self, x, training=None):
        y = self.w(self.w_pre(x)) + self.h(self.h_pre(x))
        if self.bn is not None:
            y = self.bn(y, training=training)
        return self.activation(y)

    def tf1_layer_names(self):
        """attribute -> the original's layer name (in the backbone's TF1 scope), for conversion."""
        return {branch: f"{self.prefix}_conv{self.kernel_size}_{branch}" for branch in ("w_pre", "w", "h_pre", "h")}

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size, "mid_channels": self.mid_channels,
                "out_channels": self.out_channels, "prefix": self.prefix,
                "kernel_initializer": self.kernel_initializer, "norm": self.norm,
                "activation": keras.activations.serialize(self.activation)}
