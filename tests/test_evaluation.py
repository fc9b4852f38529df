"""Evaluation metrics against NumPy on the model's own outputs; 10-crop averaging (§4.1)."""

import numpy as np
import tensorflow as tf

from alexnet_tf import build_alexnet
from alexnet_tf.evaluation import evaluate_dataset


def softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def test_metrics_match_numpy():
    rng = np.random.default_rng(0)
    model = build_alexnet("cifar", 7, seed=1)
    images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 7, 20).astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(6)  # last batch partial
    got = evaluate_dataset(model, ds, "cifar", 7)

    probs = softmax(np.asarray(model(images.astype(np.float32), training=False), np.float64))
    top1 = np.mean(probs.argmax(-1) == labels)
    ranks = (probs > probs[np.arange(20), labels][:, None]).sum(-1)
    top5 = np.mean(ranks < 5)
    loss = -np.mean(np.log(probs[np.arange(20), labels]))
    assert got["count"] == 20
    assert got["top1"] == top1 and got["top5"] == top5
    np.testing.assert_allclose(got["loss"], loss, rtol=1e-4)
    confusion = np.zeros((7, 7), int)
    np.add.at(confusion, (labels, probs.argmax(-1)), 1)
    assert got["confusion"] == confusion.tolist()
    for c in range(7):
        want = None if not (labels == c).any() else np.mean(probs.argmax(-1)[labels == c] == c)
        assert got["per_class"][c] == want


def test_ten_crop_averages_the_paper_crops():
    rng = np.random.default_rng(1)
    model = build_alexnet("cifar", 3, seed=2)
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 2], np.int32)
    got = evaluate_dataset(model, tf.data.Dataset.from_tensor_slices((images, labels)).batch(2),
                           "cifar", 3, tta="10crop")
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0))).astype(np.float32)  # as trained
    crops = []
    for top, left in ((0, 0), (0, 8), (8, 0), (8, 8), (4, 4)):
        crop = padded[:, top:top + 32, left:left + 32]
        crops += [crop, crop[:, :, ::-1]]
    probs = np.mean([softmax(np.asarray(model(c, training=False), np.float64)) for c in crops], axis=0)
    loss = -np.mean(np.log(probs[np.arange(2), labels]))
    np.testing.assert_allclose(got["loss"], loss, rtol=1e-4)
    assert got["top1"] == np.mean(probs.argmax(-1) == labels)
