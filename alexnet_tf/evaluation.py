"""Evaluation: top-1 / top-5 / loss, per-class accuracy and the confusion matrix (§4.1 10-crop)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import keras

from data_pipeline import preprocess


def evaluate_dataset(model: keras.Model, dataset: tf.data.Dataset, variant: str,
                     num_classes: int, tta: str = "none") -> dict:
    """Evaluates `model` on batches of stored-size uint8 images.

    Args:
        model: the AlexNet (logits out).
        dataset: yields (uint8 [B, S, S, 3], int labels [B]) at the variant's stored size.
        variant: model variant (fixes the crop size).
        num_classes: class count.
        tta: "none" (the centre crop) or "10crop" (softmax averaged over the four
            corner crops, the centre crop and their mirrors).

    Returns:
        dict with `loss`, `top1`, `top5` (top-min(5, classes)), `count`,
        `per_class` (accuracy per class index, None for absent classes) and
        `confusion` ([true, predicted] counts) as lists.
    """
    if tta not in ("none", "10crop"):
        raise ValueError(f"`tta` must be 'none' or '10crop'. Received: tta={tta!r}")
    _, crop = preprocess.geometry(variant)
    k = min(5, num_classes)

    @tf.function(reduce_retracing=True)
    def probabilities(images):
        if tta == "none":
            return tf.nn.softmax(tf.cast(model(preprocess.eval_images(images, variant), training=False),
                                         tf.float32))
        from data_pipeline.augment import ten_crop
        crops = ten_crop(images, crop)  # [B, 10, crop, crop, 3]
        b = tf.shape(crops)[0]
        flat = tf.reshape(tf.cast(crops, tf.float32), [-1, crop, crop, 3])
        probs = tf.nn.softmax(tf.cast(model(flat, training=False), tf.float32))
        return tf.reduce_mean(tf.reshape(probs, [b, 10, -1]), axis=1)

    confusion = np.zeros((num_classes, num_classes), np.int64)
    loss_sum = 0.0
    topk_hits = 0
    for images, labels in dataset:
        probs = probabilities(images)
        labels = tf.cast(labels, tf.int32)
        loss_sum += float(tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(labels, probs)))
        topk_hits += int(tf.reduce_sum(tf.cast(tf.nn.in_top_k(labels, probs, k), tf.int32)))
        predicted = np.argmax(probs.numpy(), axis=-1)
        np.add.at(confusion, (labels.numpy(), predicted), 1)
    count = int(confusion.sum())
    if count == 0:
        raise ValueError("The evaluation split holds no images.")
    per_class_total = confusion.sum(axis=1)
    per_class = [float(confusion[i, i] / t) if t else None for i, t in enumerate(per_class_total)]
    return {
        "loss": loss_sum / count,
        "top1": float(np.trace(confusion) / count),
        "top5": topk_hits / count,
        "count": count,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }
