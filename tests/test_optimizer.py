"""FusedMomentumSGD against the paper's update written out in NumPy, and against Keras' SGD."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from alexnet_tf.optimizer import FusedMomentumSGD


def run(optimizer, w0, grads, learning_rates, name="kernel"):
    variable = keras.Variable(w0, name=name)
    optimizer.build([variable])

    @tf.function
    def step(g, lr):
        optimizer.learning_rate.assign(lr)
        optimizer.apply_gradients([(g, variable)])
    for g, lr in zip(grads, learning_rates):
        step(tf.constant(g), tf.constant(lr, tf.float32))
    return variable.numpy(), [m.numpy() for m in optimizer.momentums]


@pytest.fixture()
def problem():
    rng = np.random.default_rng(0)
    w0 = rng.normal(0, 1.0, (7, 5)).astype(np.float32)
    grads = [rng.normal(0, 1, (7, 5)).astype(np.float32) for _ in range(4)]
    return w0, grads, [0.1, 0.1, 0.05, 0.01]  # a changing rate, as the schedules do


@pytest.mark.parametrize("name, decayed", [("kernel", True), ("bias", False)])
def test_matches_the_paper_update_written_out(problem, name, decayed):
    """v <- 0.9 v - decay lr w - lr g; w <- w + v, the decay on kernels only."""
    w0, grads, rates = problem
    decay = 0.05
    w, v = w0.astype(np.float64), np.zeros_like(w0, np.float64)
    for g, lr in zip(grads, rates):
        v = 0.9 * v - lr * (g + (decay * w if decayed else 0.0))
        w = w + v
    got_w, got_v = run(FusedMomentumSGD(0.1, momentum=0.9, coupled_decay=decay), w0, grads, rates, name)
    np.testing.assert_allclose(got_w, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_v[0], v, rtol=1e-5, atol=1e-6)
    # The decay term is big enough here to tell decayed from not.
    without = run(FusedMomentumSGD(0.1, momentum=0.9), w0, grads, rates, name)[0]
    assert (np.max(np.abs(got_w - without)) > 1e-3) == decayed


def test_without_decay_equals_keras_sgd(problem):
    w0, grads, rates = problem
    fused = run(FusedMomentumSGD(0.1, momentum=0.9), w0, grads, rates)
    plain = run(keras.optimizers.SGD(0.1, momentum=0.9), w0, grads, rates)
    np.testing.assert_allclose(fused[0], plain[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(fused[1][0], plain[1][0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kwargs", [{"momentum": 0.0}, {"momentum": 0.9, "nesterov": True}])
def test_other_sgd_forms_are_keras_update_on_the_decayed_gradient(problem, kwargs):
    w0, grads, rates = problem
    fused = run(FusedMomentumSGD(0.1, coupled_decay=0.05, **kwargs), w0, grads, rates)[0]
    # Keras' SGD fed g + decay * w by hand, the weights as they are at each step.
    variable = keras.Variable(w0, name="kernel")
    plain = keras.optimizers.SGD(0.1, **kwargs)
    plain.build([variable])
    for g, lr in zip(grads, rates):
        plain.learning_rate.assign(lr)
        plain.apply_gradients([(tf.constant(g) + 0.05 * variable.value, variable)])
    np.testing.assert_allclose(fused, variable.numpy(), rtol=1e-6, atol=1e-7)


def test_config_round_trip():
    optimizer = FusedMomentumSGD(0.02, momentum=0.8, coupled_decay=5e-4)
    clone = FusedMomentumSGD.from_config(optimizer.get_config())
    assert (clone.coupled_decay, float(clone.momentum)) == (5e-4, 0.8)
