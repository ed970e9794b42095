"""The depthwise convolution layer of the ShuffleNet-style backbones and the compressed RPN: Keras's
DepthwiseConv2D (same weights, checkpoints and forward graph) whose filter gradient can come from
the compiled op `LhrcnnDepthwiseFilterGrad` instead of TensorFlow's kernel, several times faster
on the CPU (docs/benchmarks.md#ops). The Trainer switches it on with the config's
`depthwise_filter_grad = "custom"`; the default, "tf", leaves the layer exactly Keras's."""
import tensorflow as tf

from lhrcnn import ops
from lhrcnn.keras import keras


class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """keras.layers.DepthwiseConv2D with an optional compiled filter gradient.

    `compiled_filter_grad` (set by the Trainer) takes effect where the op applies: float32 inputs and
    weights, depth multiplier 1, no dilation, channels last, the compiled ops loaded and no GPU
    visible (on a GPU TensorFlow's kernel stays). Elsewhere the layer is Keras's."""

    compiled_filter_grad = False

    def _compiled_applies(self, inputs):
        return (self.compiled_filter_grad and inputs.dtype == tf.float32 and self.depthwise_kernel.dtype == tf.float32
                and self.depth_multiplier == 1 and tuple(self.dilation_rate) == (1, 1)
                and self.data_format == "channels_last" and ops.custom_ops_available()
                and not tf.config.list_logical_devices("GPU"))

    def call(self, inputs):
        if not self._compiled_applies(inputs):
            return super().call(inputs)
        strides = [1, *self.strides, 1]
        padding = self.padding.upper()
        kernel_size = tuple(self.kernel_size)

        @tf.custom_gradient
        def convolve(x, kernel):
            def grad(dy):
                dx = tf.raw_ops.DepthwiseConv2dNativeBackpropInput(input_sizes=tf.shape(x), filter=kernel,
                                                                   out_backprop=dy, strides=strides, padding=padding)
                dk = ops.depthwise_filter_grad(x, dy, kernel_size, tuple(self.strides), padding, backend="custom")
                return dx, dk
            return tf.nn.depthwise_conv2d(x, kernel, strides, padding), grad

        outputs = convolve(inputs, tf.convert_to_tensor(self.depthwise_kernel))
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


def use_compiled_filter_grad(model, enabled=True):
    """Sets `compiled_filter_grad` on every DepthwiseConv2D of `model`; returns how many there are."""
    layers = [m for m in model.submodules if isinstance(m, DepthwiseConv2D)]
    for layer in layers:
        layer.compiled_filter_grad = enabled
    return len(layers)
