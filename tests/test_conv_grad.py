"""The matmul kernel gradient against TF's own convolution gradient, and where it is used."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from alexnet_tf import build_alexnet
from alexnet_tf.conv_grad import conv2d_matmul_filter_grad, switched_layers, use_matmul_filter_grad, wanted
from helpers import needs_bfloat16_kernels


def _grads(conv, x, kernel, weights):
    x, kernel = tf.constant(x), tf.constant(kernel)
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        y = conv(x, kernel)
        loss = tf.reduce_sum(y * weights)
    return (y, *tape.gradient(loss, [x, kernel]))


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("ksize", [(3, 3), (5, 3), (1, 1)])
def test_same_values_and_gradients_as_tf_conv(padding, ksize):
    rng = np.random.default_rng(sum(ksize))
    x = rng.normal(size=(3, 7, 6, 5)).astype(np.float32)
    kernel = rng.normal(size=(*ksize, 5, 4)).astype(np.float32)
    out_shape = tf.nn.conv2d(x, kernel, 1, padding).shape
    weights = rng.normal(size=out_shape).astype(np.float32)
    got = _grads(lambda a, k: conv2d_matmul_filter_grad(a, k, padding), x, kernel, weights)
    want = _grads(lambda a, k: tf.nn.conv2d(a, k, 1, padding), x, kernel, weights)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-4)


def test_kernel_gradient_against_a_numpy_sum_over_taps():
    # Independent of TF's gradients: dW[i, j, c, o] = sum_{n,h,w} xpad[n, h+i, w+j, c] * g[n, h, w, o].
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 5, 3))
    kernel = rng.normal(size=(3, 3, 3, 2)).astype(np.float32)
    weights = rng.normal(size=(2, 4, 5, 2))
    _, _, dw = _grads(lambda a, k: conv2d_matmul_filter_grad(a, k, "SAME"),
                      x.astype(np.float32), kernel, weights.astype(np.float32))
    xpad = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    want = np.zeros((3, 3, 3, 2))
    for i in range(3):
        for j in range(3):
            want[i, j] = np.einsum("nhwc,nhwo->co", xpad[:, i:i + 4, j:j + 5], weights)
    np.testing.assert_allclose(dw.numpy(), want, rtol=1e-5, atol=1e-5)


def test_rejects_even_kernels():
    with pytest.raises(ValueError, match="odd kernel"):
        conv2d_matmul_filter_grad(tf.zeros([1, 4, 4, 2]), tf.zeros([2, 2, 2, 2]), "SAME")


def test_model_switches_only_the_deep_convs_and_keeps_its_gradients():
    model = build_alexnet("cifar", 4, seed=1)
    reference = build_alexnet("cifar", 4, seed=1)
    switched = use_matmul_filter_grad(model)
    # conv1 (3 input channels) and conv2 (64) keep TF's kernel; conv3-5 have 192-384 inputs.
    assert switched == ["conv3", "conv4", "conv5"]
    x = tf.constant(np.random.default_rng(2).uniform(0, 255, (4, 32, 32, 3)), tf.float32)

    def grads(m):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(m(x, training=False) ** 2)
        return tape.gradient(loss, m.trainable_variables)
    for g, w in zip(grads(model), grads(reference)):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-4, atol=1e-5)
    assert model.get_config() == reference.get_config()


@needs_bfloat16_kernels
def test_bfloat16_kernel_gradients_as_close_to_float32_as_tf_own():
    # In bfloat16 both forms round; the matmul form must not be further from the float32
    # gradient than TF's bfloat16 kernel gradient is.
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        switched, native = build_alexnet("cifar", 4, seed=1), build_alexnet("cifar", 4, seed=1)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    reference = build_alexnet("cifar", 4, seed=1)
    assert use_matmul_filter_grad(switched) == ["conv3", "conv4", "conv5"]
    x = tf.constant(np.random.default_rng(3).uniform(0, 255, (8, 32, 32, 3)), tf.float32)

    def kernel_grads(m):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                tf.range(8) % 4, tf.cast(m(x, training=False), tf.float32), from_logits=True))
        return tape.gradient(loss, [m.get_layer(n).kernel for n in ("conv3", "conv4", "conv5")])
    for got, tf_bf16, want in zip(kernel_grads(switched), kernel_grads(native), kernel_grads(reference)):
        assert got.dtype == tf.float32
        err, tf_err = np.linalg.norm(got - want), np.linalg.norm(tf_bf16 - want)
        assert err <= 1.5 * tf_err + 1e-6 * np.linalg.norm(want), (err, tf_err)
        assert err <= 0.25 * np.linalg.norm(want)  # bfloat16 through the network: ~10% here


def test_wanted_only_for_bfloat16_without_gpus():
    assert not wanted("float32")
    assert not wanted("mixed_float16")
    assert wanted("mixed_bfloat16") == (not tf.config.list_logical_devices("GPU"))


def test_switched_layers_names_what_was_switched():
    model = build_alexnet("cifar", 4, seed=1)
    assert switched_layers(model) == []
    assert use_matmul_filter_grad(model) == switched_layers(model) == ["conv3", "conv4", "conv5"]
