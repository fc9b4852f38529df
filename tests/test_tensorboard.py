"""TensorBoard summaries read back with TensorBoard's own event reader: image pixels, weight
histograms, the confusion matrix (also from `evaluate`)."""

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from alexnet_tf import tensorboard as tb
from alexnet_tf.model import build_alexnet
from test_export_common import CLASS_NAMES, encode, make_run, random_images


def read_tensors(logdir):
    """tag -> [(step, ndarray)] of every tensor summary under `logdir` (one event folder)."""
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return {tag: [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"]}


def decode_pngs(summary):
    """An image summary's tensor: [width, height, png, png, ...] -> uint8 arrays."""
    return [np.asarray(Image.open(io.BytesIO(png))) for png in summary[2:]]


def test_log_images_keeps_the_pixels(tmp_path):
    images = random_images(5, 6, 7, seed=1).astype(np.float32)  # whole values in [0, 255]
    writer = tf.summary.create_file_writer(str(tmp_path))
    tb.log_images(writer, "train/inputs", images, step=3, max_outputs=4)
    tb.log_images(writer, "train/clipped", np.array([[[[-20.0, 300.0, 127.4]]]]), step=4)
    writer.close()
    tensors = read_tensors(tmp_path)
    [(step, summary)] = tensors["train/inputs"]
    assert step == 3 and summary[:2].tolist() == [b"7", b"6"]
    decoded = decode_pngs(summary)
    assert len(decoded) == 4
    for got, want in zip(decoded, images.astype(np.uint8)):
        np.testing.assert_array_equal(got, want)
    [(_, clipped)] = tensors["train/clipped"]
    assert decode_pngs(clipped)[0].tolist() == [[[0, 255, 127]]]
    with pytest.raises(ValueError, match=r"Received: images.shape=\(6, 7, 3\)"):
        tb.log_images(writer, "x", images[0], step=0)


def test_log_weight_histograms_covers_every_weight(tmp_path):
    model = build_alexnet("cifar", 3, seed=2)
    writer = tf.summary.create_file_writer(str(tmp_path))
    tb.log_weight_histograms(writer, model, step=7)
    writer.close()
    tensors = read_tensors(tmp_path)
    weights = {f"weights/{layer.name}/{w.name}": np.asarray(w.numpy())
               for layer in model.layers for w in layer.weights}
    assert {"weights/conv1/kernel", "weights/fc8/bias"} <= set(weights) and len(weights) == 16
    assert set(tensors) == set(weights)
    for tag, values in weights.items():
        [(step, histogram)] = tensors[tag]  # [buckets, 3]: left edge, right edge, count
        assert step == 7
        assert histogram[:, 2].sum() == pytest.approx(values.size), tag
        assert histogram[0, 0] == pytest.approx(values.min(), abs=1e-6), tag
        assert histogram[-1, 1] == pytest.approx(values.max(), abs=1e-6), tag


def test_log_confusion_is_an_image(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    tb.log_confusion(writer, [[5, 1, 0], [0, 3, 2], [1, 0, 4]], CLASS_NAMES, step=2)
    writer.close()
    [(step, summary)] = read_tensors(tmp_path)["confusion"]
    [picture] = decode_pngs(summary)
    assert step == 2 and picture.ndim == 3 and picture.shape[0] > 100 and picture.shape[1] > 100
    assert len(np.unique(picture.reshape(-1, picture.shape[-1]), axis=0)) > 10  # drawn, not blank
    with pytest.raises(ValueError, match=r"Received: confusion.shape=\(2, 2\)"):
        tb.log_confusion(writer, [[1, 0], [0, 1]], CLASS_NAMES, step=0)


def test_evaluate_logs_the_confusion_matrix(tmp_path):
    from alexnet_tf.evaluation import evaluate_run

    model_dir, _ = make_run(tmp_path / "run", seed=3)
    pixels = random_images(6, 32, 32, seed=4)
    for i, name in enumerate(CLASS_NAMES * 2):
        os.makedirs(tmp_path / "data" / "val" / name, exist_ok=True)
        (tmp_path / "data" / "val" / name / f"{i}.png").write_bytes(encode(pixels[i], "PNG"))
    evaluate_run(model_dir, dataset="folder", data_dir=str(tmp_path / "data"), batch_size=4)
    tensors = read_tensors(os.path.join(model_dir, "logs", "eval"))
    [(step, summary)] = tensors["confusion/val/best"]
    assert step == 0 and len(decode_pngs(summary)) == 1


def check_training_pictures(model_dir, *, seed, num_classes, synthetic_examples, batch_size, epochs):
    """The TensorBoard events of a synthetic `train` run hold its scalars, a histogram of each
    weight per epoch and, per epoch, the first batch as the train step augmented it: the
    pixels of that step's batch under that step's draws, recomputed here."""
    import json
    from data_pipeline.augment import AugmentConfig, augment_batch
    from data_pipeline.pipeline import load_data

    tensors = read_tensors(os.path.join(model_dir, "logs"))
    assert {"loss", "lr", "val_top1", "weights/conv1/kernel", "weights/fc8/bias"} <= set(tensors)
    assert [step for step, _ in tensors["weights/conv1/kernel"]] == list(range(1, epochs + 1))
    pictures = tensors["train/augmented"]
    steps_per_epoch = synthetic_examples // batch_size
    assert [step for step, _ in pictures] == [e * steps_per_epoch for e in range(epochs)]
    with open(os.path.join(model_dir, "pca.json")) as f:
        pca = json.load(f)
    augment = AugmentConfig.for_variant("cifar", pca_std=0.1, pca_eigvals=tuple(pca["eigvals"]),
                                        pca_eigvecs=tuple(map(tuple, pca["eigvecs"])))
    source = load_data("synthetic", None, "cifar", seed=seed, num_classes=num_classes,
                       synthetic_examples=synthetic_examples)
    for epoch, (step, summary) in enumerate(pictures):
        images, _ = next(iter(source.train_dataset(batch_size, epoch)))
        want = augment_batch(images, tf.constant([seed * 1000003, step], tf.int64), augment).numpy()
        got = np.stack(decode_pngs(summary))
        assert got.shape == (min(16, batch_size), 32, 32, 3)
        # The step runs the augmentation under XLA: rounding may differ by one level.
        assert np.abs(got.astype(int) - np.clip(np.round(want[:16]), 0, 255)).max() <= 1
        other = augment_batch(images, tf.constant([seed * 1000003, step + 1], tf.int64), augment).numpy()
        assert np.abs(got.astype(int) - np.clip(np.round(other[:16]), 0, 255)).max() > 1
