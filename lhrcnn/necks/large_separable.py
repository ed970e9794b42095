"""The large separable convolution that makes Light-Head R-CNN's thin feature map
(reference §3.3, the original's `global_context_module`): (k x 1 -> C_mid -> 1 x k -> C_out)
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
    """

    def __init__(self, kernel_size=15, mid_channels=256, out_channels=490, prefix="conv_new_1",
                 activation="relu", **kwargs):
        super().__init__(**kwargs)
        self.kernel_size, self.mid_channels, self.out_channels = kernel_size, mid_channels, out_channels
        self.prefix, self.activation = prefix, keras.activations.get(activation)
        k = kernel_size

        def conv(name, channels, kernel):
            return keras.layers.Conv2D(channels, kernel, padding="same", use_bias=True,
                                       kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                                       bias_initializer="zeros", name=f"{prefix}_conv15_{name}")
        self.w_pre = conv("w_pre", mid_channels, (k, 1))
        self.w = conv("w", out_channels, (1, k))
        self.h_pre = conv("h_pre", mid_channels, (1, k))
        self.h = conv("h", out_channels, (k, 1))

    def call(self, x):
        return self.activation(self.w(self.w_pre(x)) + self.h(self.h_pre(x)))

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size, "mid_channels": self.mid_channels,
                "out_channels": self.out_channels, "prefix": self.prefix,
                "activation": keras.activations.serialize(self.activation)}
