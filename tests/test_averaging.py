"""The moving average of the weights (--ema_decay): its update rule, the swap, and a run's files."""

import os

import numpy as np
import pytest
import tensorflow as tf
import keras

from alexnet_tf import build_alexnet
from alexnet_tf.averaging import WeightAverage
from alexnet_tf.training import TrainConfig, train


def ema_decay(decay, n):
    """tf.train.ExponentialMovingAverage's decay with num_updates=n."""
    return min(decay, (1.0 + n) / (10.0 + n))


def test_update_follows_the_formula():
    rng = np.random.default_rng(0)
    weights = [keras.Variable(rng.normal(size=(3, 4)).astype(np.float32), name="kernel"),
               keras.Variable(rng.normal(size=(4,)).astype(np.float32), name="bias")]
    average = WeightAverage(weights, 0.3)  # the warm-up term wins for n = 1, 2; 0.3 from n = 3
    want = [w.numpy().astype(np.float64) for w in weights]
    for n in range(1, 6):
        for w in weights:
            w.assign(rng.normal(size=w.shape).astype(np.float32))
        average.update(tf.constant(n, tf.int64))
        d = ema_decay(0.3, n)
        want = [d * s + (1 - d) * w.numpy() for s, w in zip(want, weights)]
        for s, expected in zip(average.shadows, want):
            np.testing.assert_allclose(s.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_swapped_holds_the_averages_and_restores_the_weights_exactly():
    weights = [keras.Variable(np.arange(6, dtype=np.float32).reshape(2, 3), name="kernel")]
    average = WeightAverage(weights, 0.9)
    raw_before = weights[0].numpy().copy()
    weights[0].assign(raw_before * 3.0 + 1.0)
    average.update(tf.constant(1, tf.int64))
    raw, averaged = weights[0].numpy().copy(), average.shadows[0].numpy().copy()
    assert not np.array_equal(raw, averaged)
    with average.swapped():
        np.testing.assert_array_equal(weights[0].numpy(), averaged)
    np.testing.assert_array_equal(weights[0].numpy(), raw)
    np.testing.assert_array_equal(average.shadows[0].numpy(), averaged)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_rejects_a_decay_outside_zero_one(decay):
    with pytest.raises(ValueError, match="decay must be in"):
        WeightAverage([keras.Variable(np.zeros(2, np.float32), name="w")], decay)


def test_a_run_checkpoints_both_and_saves_the_averaged_weights(tmp_path):
    """Per-step checkpoints give the raw weights w_n and shadows s_n of each step n:
    s_n = d_n s_(n-1) + (1 - d_n) w_n; the run's weight file holds the last s_n."""
    model_dir = str(tmp_path / "run")
    config = TrainConfig(model="cifar", dataset="synthetic", num_classes=3, synthetic_examples=64,
                         batch_size=16, epochs=2, steps_per_epoch=3, checkpoint_every_steps=1,
                         keep_checkpoints=10, ema_decay=0.6, learning_rate=0.01, model_dir=model_dir,
                         verbose=0)
    train(config)

    def read(step):
        reader = tf.train.load_checkpoint(os.path.join(model_dir, "ckpt", f"ckpt-{step}"))
        names = reader.get_variable_to_shape_map()
        count = len([n for n in names if n.startswith("weight_average/")])
        raw = [reader.get_tensor(f"optimizer/_trainable_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE")
               for i in range(count)]
        shadows = [reader.get_tensor(f"weight_average/{i}/.ATTRIBUTES/VARIABLE_VALUE") for i in range(count)]
        return raw, shadows

    previous = read(1)[1]
    for step in range(2, 7):
        raw, shadows = read(step)
        d = ema_decay(0.6, step)
        for w, s_prev, s in zip(raw, previous, shadows):
            np.testing.assert_allclose(s, d * s_prev + (1 - d) * w, rtol=1e-5, atol=1e-6)
        previous = shadows

    raw, shadows = read(6)
    saved = build_alexnet("cifar", 3)
    saved.load_weights(os.path.join(model_dir, "latest.weights.h5"))
    assert len(saved.trainable_variables) == len(shadows) == 16
    for v, s, w in zip(saved.trainable_variables, shadows, raw):
        np.testing.assert_array_equal(v.numpy(), s)
    assert any(not np.array_equal(s, w) for s, w in zip(shadows, raw))

    with pytest.raises(ValueError, match="weight_average"):
        train(TrainConfig(**{**config.__dict__, "ema_decay": 0.0, "epochs": 3}))
