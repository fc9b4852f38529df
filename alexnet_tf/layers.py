"""Local Response Normalization (Krizhevsky et al. 2012, §3.3) as a Keras layer."""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf
import keras

from alexnet_tf.config import LRN_IMPLEMENTATIONS



def _check_positive(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a number. Received: {name}={value!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive finite number. Received: {name}={value}")
    return value


def channel_band(channels: int, size: int) -> np.ndarray:
    """The [C, C] 0/1 matrix whose column c sums channels max(0, c-size//2)..c+size//2."""
    idx = np.arange(channels)
    return (np.abs(idx[:, None] - idx[None, :]) <= size // 2).astype(np.float32)


def _inverse_power(d: tf.Tensor, beta: float) -> tf.Tensor:
    """d ** -beta as exp(-beta * log(d)), for d >= k > 0.

    LOG, MUL and EXP all quantize to int8 (LiteRT runs int8 LOG and EXP as
    256-entry lookup tables) and XNNPACK runs all three in float. Measured on
    the cifar model, int8 RSQRT (d^-0.75 = rsqrt(d) * sqrt(rsqrt(d))) costs
    ~80 ns per element in LiteRT's kernel, 100x an int8 EXP; POW stays float.
    """
    return tf.exp(-beta * tf.math.log(d))


def window_sum(t: tf.Tensor, size: int) -> tf.Tensor:
    """Sum over the channel window c-size//2..c+size//2 of a channels-last tensor (zeros past the edges)."""
    radius, channels = size // 2, t.shape[-1]
    padded = tf.pad(t, [[0, 0]] * (t.shape.rank - 1) + [[radius, radius]])
    return tf.add_n([padded[..., i:i + channels] for i in range(size)])


def _fast_inverse_power(d: tf.Tensor, beta: float) -> tf.Tensor:
    """d ** -beta; for the paper's 0.75 as rsqrt(d) * sqrt(rsqrt(d)) (~15% faster than exp/log in XLA)."""
    if beta == 0.75:
        r = tf.math.rsqrt(d)
        return r * tf.sqrt(r)
    return _inverse_power(d, beta)


@functools.lru_cache(maxsize=None)
def fused_lrn(size: int, k: float, alpha: float, beta: float):
    """LRN with an XLA-fused forward and a closed-form XLA-fused gradient, for training.

    With d = k + alpha * W(x^2) (W: the symmetric channel window sum) and y = x * d^-beta,
    dL/dx = g * d^-beta - 2 * alpha * beta * x * W(g * y / d) for g = dL/dy. Each XLA
    cluster is one pass over the activation, where TF's LRN op sums the window as a [C, C]
    matrix product and its LRNGrad loops over the window per element.
    """
    @tf.function(jit_compile=True)
    def forward(x):
        d = k + alpha * window_sum(x * x, size)
        return x * _fast_inverse_power(d, beta), d

    @tf.function(jit_compile=True)
    def backward(g, x, y, d):
        return g * _fast_inverse_power(d, beta) - (2 * alpha * beta) * x * window_sum(g * y / d, size)

    @tf.custom_gradient
    def lrn(x):
        y, d = forward(x)
        return y, lambda g: backward(g, x, y, d)

    return lrn


@keras.saving.register_keras_serializable(package="alexnet_tf")
class LocalResponseNormalization(keras.layers.Layer):
    """Cross-channel LRN of the AlexNet paper, channels-last.

    b[c] = a[c] / (k + alpha * sum_{j=max(0, c-size//2)}^{min(C-1, c+size//2)} a[j]^2) ** beta

    `alpha` multiplies the plain sum of squares, as in the paper and in
    `tf.nn.local_response_normalization`. PyTorch's `nn.LocalResponseNorm` and
    Caffe divide alpha by `size`: a paper alpha of 1e-4 is PyTorch/Caffe
    `alpha=5e-4` with `size=5`.

    The layer computes in float32 whatever the dtype policy (squares of
    activations around 300 overflow float16) and casts the result back.

    Args:
        size: odd window length over channels (the paper's n). Default 5.
        k: additive constant. Default 2.
        alpha: scale of the sum of squares. Default 1e-4.
        beta: exponent. Default 0.75.
        implementation: "fused" trains with `fused_lrn` (an XLA-fused forward
            and gradient, several times faster than TF's LRN and LRNGrad ops on
            a CPU) and computes as "builtin" outside training, so exported
            graphs hold no XLA ops. "builtin" uses `tf.nn.local_response_normalization`
            (becomes TFLite's LOCAL_RESPONSE_NORMALIZATION op); "decomposed"
            has a cheaper gradient than TF's LRNGrad and is the form for
            TFLite integer models and delegates: the square is a multiply,
            the window sum `k + alpha * sum` a fixed 1x1 convolution over
            channels (kernel alpha * band, bias k) and the power
            exp(-beta * log(.)) (see `_inverse_power`). TFLite's builtin
            LRN kernel is float32-only and neither XNNPACK nor the GPU
            delegate runs it; the decomposed ops quantize to int8 and
            delegate. Both compute the same formula.
    """

    def __init__(self, size: int = 5, k: float = 2.0, alpha: float = 1e-4,
                 beta: float = 0.75, implementation: str = "builtin", **kwargs):
        super().__init__(**kwargs)
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
            raise TypeError(f"`size` must be an odd positive integer. Received: size={size!r}")
        if size < 1 or size % 2 == 0:
            raise ValueError(f"`size` must be an odd positive integer. Received: size={size}")
        if implementation not in LRN_IMPLEMENTATIONS:
            raise ValueError(f"`implementation` must be one of {LRN_IMPLEMENTATIONS}. "
                             f"Received: implementation={implementation!r}")
        self.size = int(size)
        self.k = _check_positive("k", k)
        self.beta = _check_positive("beta", beta)
        alpha = float(alpha)
        if not np.isfinite(alpha) or alpha < 0:
            raise ValueError(f"`alpha` must be a non-negative finite number. Received: alpha={alpha}")
        self.alpha = alpha
        self.implementation = implementation
        self._band = None

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError("LocalResponseNormalization expects [batch, height, width, channels] "
                             f"with a known channel count. Received: input_shape={input_shape}")
        self._band = channel_band(int(input_shape[-1]), self.size)
        super().build(input_shape)

    def call(self, inputs, training=None):
        x = tf.cast(inputs, tf.float32)
        if self.implementation == "fused" and training:
            y = fused_lrn(self.size, self.k, self.alpha, self.beta)(x)
        elif self.implementation in ("fused", "builtin"):
            y = tf.nn.local_response_normalization(
                x, depth_radius=self.size // 2, bias=self.k, alpha=self.alpha, beta=self.beta)
        else:
            # [1, 1, C, C] kernel: output channel c sums alpha * a[j]^2 over the window.
            kernel = tf.constant((self.alpha * self._band)[None, None])
            d = tf.nn.conv2d(x * x, kernel, strides=1, padding="VALID") + self.k
            y = x * _inverse_power(d, self.beta)
        return tf.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(size=self.size, k=self.k, alpha=self.alpha, beta=self.beta,
                      implementation=self.implementation)
        return config
