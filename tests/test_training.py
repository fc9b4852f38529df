"""The training recipe: the paper's SGD update (§5) and the learning-rate schedules."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from alexnet_tf import build_alexnet
from alexnet_tf.optimizer import FusedMomentumSGD
from alexnet_tf.schedule import LearningRate
from alexnet_tf.train_step import make_replica_step
from alexnet_tf.training import TrainConfig


def data_loss(model, images, labels):
    logits = model(tf.cast(images, tf.float32), training=True)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))


@pytest.mark.parametrize("lr", [0.01, 0.05])
def test_two_sgd_steps_follow_the_paper_update(lr):
    """v <- 0.9 v - 0.0005 lr w - lr dL/dw; w <- w + v (kernels decayed, biases not)."""
    model = build_alexnet("cifar", 3, seed=0, dropout=0.0)
    optimizer = FusedMomentumSGD(learning_rate=lr, momentum=0.9, coupled_decay=5e-4)
    optimizer.build(model.trainable_variables)
    step = tf.function(make_replica_step(model, optimizer, variant="cifar", global_batch=4, top_k=3))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 1], np.int32)
    variables = model.trainable_variables
    w = [v.numpy().astype(np.float64) for v in variables]
    velocity = [np.zeros_like(x) for x in w]
    decayed = [v.path.endswith("kernel") for v in variables]
    assert sum(decayed) == 8 and len(variables) == 16
    for s in range(2):
        with tf.GradientTape() as tape:
            loss = data_loss(model, images, labels)
        grads = [g.numpy().astype(np.float64) for g in tape.gradient(loss, variables)]
        for i in range(len(w)):
            velocity[i] = 0.9 * velocity[i] - (0.0005 * lr * w[i] if decayed[i] else 0.0) - lr * grads[i]
            w[i] = w[i] + velocity[i]
        sums = step(images, labels, tf.constant(s, tf.int64)).numpy()
        np.testing.assert_allclose(sums[0] / 4, float(loss), rtol=1e-5)
        for v, want in zip(variables, w):
            np.testing.assert_allclose(v.numpy(), want, rtol=1e-4, atol=1e-7, err_msg=f"{v.path} step {s}")
    # The decay really acted: without it the kernels would differ.
    assert np.max(np.abs(0.0005 * lr * w[0])) > 1e-8


def test_plateau_divides_by_ten_at_most_three_times():
    schedule = LearningRate(TrainConfig(learning_rate=0.01, lr_schedule="plateau", plateau_patience=2), 10)
    assert schedule(0) == pytest.approx(0.01)
    assert not schedule.end_of_epoch(0.5)
    assert not schedule.end_of_epoch(0.4)            # one bad epoch
    assert schedule.end_of_epoch(0.45)               # two: divide
    assert schedule(123) == pytest.approx(0.001)
    for _ in range(20):
        schedule.end_of_epoch(0.1)
    assert schedule(5) == pytest.approx(0.01 * 1e-3)  # three divisions, no more


def test_cosine_with_warmup():
    schedule = LearningRate(TrainConfig(learning_rate=0.1, epochs=10, lr_schedule="cosine",
                                        warmup_epochs=1), steps_per_epoch=100)
    assert schedule(0) == pytest.approx(0.1 / 100)
    assert schedule(99) == pytest.approx(0.1)
    mid = 100 + (1000 - 100) // 2
    assert schedule(mid) == pytest.approx(0.05, rel=1e-6)
    assert schedule(1000) == pytest.approx(0.0, abs=1e-12)


def test_step_schedule_thirds():
    schedule = LearningRate(TrainConfig(learning_rate=0.1, epochs=3, lr_schedule="step"), 10)
    assert [schedule(s) for s in (0, 9, 10, 19, 20, 29)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_seconds_to_accuracy_takes_the_first_epoch_at_or_above_each_threshold():
    from alexnet_tf.run_log import seconds_to_accuracy
    history = [{"val_top1": a, "wall_seconds": 100.0 * (i + 1)}
               for i, a in enumerate([0.55, 0.75, 0.70, 0.81, 0.8049])]
    assert seconds_to_accuracy(history) == {"0.5": 100.0, "0.6": 200.0, "0.7": 200.0, "0.75": 200.0,
                                            "0.8": 400.0}
    assert seconds_to_accuracy([]) == {}


def test_label_smoothing_loss_matches_the_formula():
    """loss = -sum_c q_c log softmax(z)_c with q = (1 - eps) one_hot + eps / C."""
    model = build_alexnet("cifar", 3, seed=0, dropout=0.0)
    optimizer = keras.optimizers.SGD(learning_rate=0.0, momentum=0.9)
    optimizer.build(model.trainable_variables)
    step = tf.function(make_replica_step(model, optimizer, variant="cifar", global_batch=4,
                                         top_k=3, label_smoothing=0.2))
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 1], np.int32)
    logits = model(tf.cast(images, tf.float32), training=True).numpy().astype(np.float64)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    q = 0.8 * np.eye(3)[labels] + 0.2 / 3
    want = -(q * log_p).sum(-1)
    sums = step(images, labels, tf.constant(0, tf.int64)).numpy()
    np.testing.assert_allclose(sums[0], want.sum(), rtol=1e-5)
    # Smoothing changes the loss: plain cross-entropy differs.
    assert abs(want.sum() - (-log_p[np.arange(4), labels]).sum()) > 1e-3


def test_the_augmented_step_feeds_the_model_the_augmented_pixels():
    """The step normalises inside its augmentation and runs the model past `normalize`:
    its loss equals the whole model's on `augment_batch`'s pixels with the same seed."""
    from data_pipeline.augment import AugmentConfig, augment_batch
    model = build_alexnet("cifar", 3, seed=0, dropout=0.0, mean=(100.0, 120.0, 140.0), std=(50.0, 60.0, 70.0))
    optimizer = keras.optimizers.SGD(learning_rate=0.0)
    optimizer.build(model.trainable_variables)
    augment = AugmentConfig(crop_size=32, pad=4, flip=True, noise_std=5.0)
    step = tf.function(make_replica_step(model, optimizer, variant="cifar", global_batch=4, top_k=3,
                                         augment=augment, seed=7, seed_offset=2))
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 1], np.int32)
    for s in (0, 5):
        pixels = augment_batch(images, tf.constant([7 * 1000003 + 2, s], tf.int64), augment)
        want = data_loss(model, pixels, labels).numpy() * 4
        got = step(images, labels, tf.constant(s, tf.int64)).numpy()[0]
        np.testing.assert_allclose(got, want, rtol=1e-5)
    # The draws depend on the step: another step's pixels give another loss.
    other = augment_batch(images, tf.constant([7 * 1000003 + 2, 1], tf.int64), augment)
    assert abs(data_loss(model, other, labels).numpy() * 4 - got) > 1e-4
    # The model itself still takes raw pixels: its first layer is still `normalize`.
    assert [layer.name for layer in model.layers[:2]] == ["images", "normalize"]


def test_a_model_without_a_normalize_layer_is_trained_whole():
    from alexnet_tf.train_step import split_normalization
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    net, normalize = split_normalization(model)
    x = tf.random.uniform((2, 4, 4, 3), 0, 255)
    assert net is model
    np.testing.assert_array_equal(normalize(x).numpy(), x.numpy())
