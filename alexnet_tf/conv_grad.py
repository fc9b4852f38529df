"""A faster kernel gradient for the deep 3x3 convolutions when training in bfloat16 on a CPU.

oneDNN's bfloat16 Conv2DBackpropFilter is slow on small feature maps with many channels:
for the cifar model's conv3-conv5 (7x7 maps, 192-384 channels, batch 128) it runs at
~50 GFLOP/s, a quarter of its forward convolution. The same gradient written as one
matrix product per kernel tap,

    dW[i, j] = sum over n, h, w of  x_pad[n, h + i, w + j, :]^T  dy[n, h, w, :],

runs 2.4-3.4x faster there (bfloat16 matmuls use AMX), and makes the cifar train step
~1.2x faster. In float32 TF's own kernel is the faster one, and GPUs have cuDNN, so the
swap is made only for bfloat16 training on CPUs (see `bench/train.py` for the measurement).
The forward convolution and the input gradient are TF's, unchanged.
"""

from __future__ import annotations

import types

import tensorflow as tf
import keras

# Layers with fewer input channels keep TF's kernel: it is as fast or faster there.
MIN_INPUT_CHANNELS = 128


def conv2d_matmul_filter_grad(x: tf.Tensor, kernel: tf.Tensor, padding: str) -> tf.Tensor:
    """`tf.nn.conv2d(x, kernel, 1, padding)` whose kernel gradient is kh*kw matmuls.

    Args:
        x: [N, H, W, Cin] input.
        kernel: [kh, kw, Cin, Cout] with odd kh and kw.
        padding: "SAME" or "VALID" (stride 1, no dilation).
    """
    kh, kw, cin, cout = kernel.shape
    if kh % 2 == 0 or kw % 2 == 0 or padding not in ("SAME", "VALID"):
        raise ValueError(f"Needs an odd kernel and SAME or VALID padding. "
                         f"Received: kernel {kh}x{kw}, padding={padding!r}")

    @tf.custom_gradient
    def conv(x, kernel):
        y = tf.nn.conv2d(x, kernel, strides=1, padding=padding)

        def grad(dy):
            dx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=kernel, out_backprop=dy,
                                                strides=[1, 1, 1, 1], padding=padding)
            out_h, out_w = tf.shape(dy)[1], tf.shape(dy)[2]
            padded = x
            if padding == "SAME":
                padded = tf.pad(x, [[0, 0], [kh // 2, kh // 2], [kw // 2, kw // 2], [0, 0]])
            dy_rows = tf.reshape(dy, [-1, cout])
            taps = [tf.matmul(tf.reshape(padded[:, i:i + out_h, j:j + out_w, :], [-1, cin]),
                              dy_rows, transpose_a=True)
                    for i in range(kh) for j in range(kw)]
            return dx, tf.reshape(tf.stack(taps), [kh, kw, cin, cout])
        return y, grad
    return conv(x, kernel)


def _convolution_op(layer, inputs, kernel):
    # The kernel arrives as a Keras variable; as a tensor it carries the autocast dtype.
    kernel = tf.convert_to_tensor(keras.ops.convert_to_tensor(kernel))
    return conv2d_matmul_filter_grad(inputs, kernel, layer.padding.upper())


def eligible(layer) -> bool:
    """A stride-1, undilated, ungrouped Conv2D with odd kernels and >= 128 input channels."""
    return (type(layer) is keras.layers.Conv2D and layer.groups == 1
            and tuple(layer.strides) == (1, 1) and tuple(layer.dilation_rate) == (1, 1)
            and layer.data_format == "channels_last"
            and all(k % 2 for k in layer.kernel_size) and layer.kernel.shape[2] >= MIN_INPUT_CHANNELS)


def use_matmul_filter_grad(model: keras.Model) -> list:
    """Switches the eligible convolutions of a built model to `conv2d_matmul_filter_grad`.

    The layers' weights, config and forward results are unchanged: only the kernel
    gradient is computed differently. Returns the names of the switched layers.
    """
    switched = []
    for layer in model.layers:
        if eligible(layer):
            layer.convolution_op = types.MethodType(_convolution_op, layer)
            switched.append(layer.name)
    return switched


def switched_layers(model: keras.Model) -> list:
    """The names of the layers `use_matmul_filter_grad` switched."""
    return [layer.name for layer in model.layers if "convolution_op" in vars(layer)]


def wanted(precision: str, strategy=None) -> bool:
    """True for bfloat16 training whose replicas are CPUs (no GPU, no TPU)."""
    if precision != "mixed_bfloat16" or tf.config.list_logical_devices("GPU"):
        return False
    return not isinstance(strategy, tf.distribute.TPUStrategy)
