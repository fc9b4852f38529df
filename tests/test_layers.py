"""LocalResponseNormalization against a NumPy loop of the paper's §3.3 equation."""

import os

import numpy as np
import pytest
import keras

from alexnet_tf import LocalResponseNormalization
from alexnet_tf.config import LRN_IMPLEMENTATIONS as IMPLEMENTATIONS


def lrn_reference(a, size, k, alpha, beta):
    """b[c] = a[c] / (k + alpha * sum_{j=max(0,c-n/2)}^{min(C-1,c+n/2)} a[j]^2)^beta, in float64."""
    a = np.asarray(a, np.float64)
    channels = a.shape[-1]
    out = np.empty_like(a)
    for c in range(channels):
        lo, hi = max(0, c - size // 2), min(channels - 1, c + size // 2)
        window = np.zeros(a.shape[:-1])
        for j in range(lo, hi + 1):
            window += a[..., j] ** 2
        out[..., c] = a[..., c] / (k + alpha * window) ** beta
    return out


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("size", [3, 5, 7])
def test_matches_paper_formula(size, implementation):
    rng = np.random.default_rng(size)
    # Large activations so that the normaliser is far from k (alpha * sum a^2 ~ k).
    x = rng.uniform(-150, 300, size=(2, 4, 3, 9)).astype(np.float32)
    layer = LocalResponseNormalization(size=size, k=2.0, alpha=1e-4, beta=0.75,
                                       implementation=implementation)
    got = np.asarray(layer(x, training=True))  # "fused" computes with its training kernel
    want = lrn_reference(x, size, 2.0, 1e-4, 0.75)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-4)
    # The normaliser really acts: the output is not the input.
    assert np.max(np.abs(want - x)) > 1.0


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_edge_channels_and_other_constants(implementation):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 50, size=(1, 2, 2, 4)).astype(np.float32)  # fewer channels than the window
    layer = LocalResponseNormalization(size=7, k=1.0, alpha=3e-3, beta=0.5, implementation=implementation)
    for training in (True, False):
        np.testing.assert_allclose(np.asarray(layer(x, training=training)), lrn_reference(x, 7, 1.0, 3e-3, 0.5),
                                   rtol=2e-5, atol=1e-4)


def test_fused_lrn_runs_the_builtin_op_outside_training():
    import tensorflow as tf

    layer = LocalResponseNormalization(implementation="fused")
    x = tf.zeros((1, 3, 3, 8))

    def op_types(training):
        graph = tf.function(lambda t: layer(t, training=training)).get_concrete_function(x).graph
        return {op.type for op in graph.get_operations()}
    # Exported (inference) graphs hold TF's LRN op, as the builtin form; training calls the
    # XLA-compiled kernels instead.
    assert "LRN" in op_types(False)
    assert "LRN" not in op_types(True) and {"PartitionedCall", "StatefulPartitionedCall"} & op_types(True)


def test_config_round_trip():
    layer = LocalResponseNormalization(size=3, k=1.5, alpha=2e-4, beta=0.6, implementation="decomposed", name="lrnx")
    clone = LocalResponseNormalization.from_config(layer.get_config())
    assert (clone.size, clone.k, clone.alpha, clone.beta, clone.implementation, clone.name) == \
        (3, 1.5, 2e-4, 0.6, "decomposed", "lrnx")


def test_keras_file_reload_without_custom_objects(tmp_path):
    inputs = keras.Input((4, 4, 6))
    model = keras.Model(inputs, LocalResponseNormalization(size=3, alpha=1e-2)(inputs))
    path = os.path.join(tmp_path, "lrn.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    x = np.random.default_rng(1).normal(0, 10, (2, 4, 4, 6)).astype(np.float32)
    assert isinstance(reloaded.layers[-1], LocalResponseNormalization)
    np.testing.assert_array_equal(np.asarray(reloaded(x)), np.asarray(model(x)))


@pytest.mark.parametrize("kwargs, match", [
    ({"size": 4}, "odd positive integer.*size=4"),
    ({"size": 0}, "odd positive integer.*size=0"),
    ({"size": 2.5}, "odd positive integer"),
    ({"k": 0.0}, "positive.*k=0.0"),
    ({"k": -1}, "positive.*k=-1"),
    ({"beta": -0.75}, "positive.*beta=-0.75"),
    ({"alpha": -1e-4}, "non-negative.*alpha"),
    ({"implementation": "fast"}, "implementation.*fast"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        LocalResponseNormalization(**kwargs)


def test_rejects_non_image_input():
    with pytest.raises(ValueError, match="batch, height, width, channels"):
        LocalResponseNormalization()(np.zeros((2, 8), np.float32))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_float16_large_activations_do_not_overflow(implementation):
    # 300^2 * 5 = 450000 overflows float16 (max 65504) if the sum were taken in float16.
    x = np.full((1, 2, 2, 8), 300.0, np.float16)
    layer = LocalResponseNormalization(implementation=implementation, dtype="mixed_float16")
    got = np.asarray(layer(x, training=True))
    assert got.dtype == np.float16
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got.astype(np.float64), lrn_reference(x, 5, 2.0, 1e-4, 0.75), rtol=2e-3)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_gradient_matches_finite_differences_of_the_formula(implementation):
    import tensorflow as tf

    rng = np.random.default_rng(7)
    x = rng.uniform(-150, 300, size=(1, 2, 2, 7))
    weights = rng.normal(size=x.shape)
    layer = LocalResponseNormalization(size=5, implementation=implementation)
    xt = tf.constant(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(layer(xt, training=True) * weights.astype(np.float32))
    got = tape.gradient(loss, xt).numpy()

    def reference_loss(a):
        return float(np.sum(lrn_reference(a, 5, 2.0, 1e-4, 0.75) * weights))

    want = np.zeros_like(x)
    step = 1e-4
    for i in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[i] += step
        minus[i] -= step
        want[i] = (reference_loss(plus) - reference_loss(minus)) / (2 * step)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # The cross-channel term matters here: the gradient is not that of x * constant.
    d = 2.0 + 1e-4 * np.stack([np.sum(x[..., max(0, c - 2):c + 3] ** 2, -1) for c in range(7)], -1)
    assert np.max(np.abs(want - weights * d ** -0.75)) > 1e-2
