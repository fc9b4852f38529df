"""TensorBoard summaries beyond scalars: image batches, weight histograms, the confusion matrix.

Each helper writes through a `tf.summary` writer (`tf.summary.create_file_writer(folder)`)
at an explicit step; none of them reads global state.
"""

from __future__ import annotations

import io
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf


def log_images(writer, name: str, images, step: int, max_outputs: int = 16) -> None:
    """Logs up to `max_outputs` images as one image summary.

    Args:
        writer: a `tf.summary` writer.
        name: the summary's tag.
        images: [B, H, W, 3] (or 1 channel) pixels in [0, 255], any real dtype; rounded
            and clipped to uint8, so the stored PNGs hold exactly those values.
        step: the step to log at.
        max_outputs: most images kept.

    Raises:
        ValueError: images that are not [B, H, W, C] with C in (1, 3, 4), or a bad max_outputs.
    """
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"`images` must be [batch, height, width, 1, 3 or 4]. "
                         f"Received: images.shape={tuple(images.shape)}")
    if isinstance(max_outputs, bool) or not isinstance(max_outputs, int) or max_outputs < 1:
        raise ValueError(f"`max_outputs` must be a positive integer. Received: max_outputs={max_outputs!r}")
    if images.dtype != tf.uint8:
        images = tf.cast(tf.clip_by_value(tf.round(tf.cast(images, tf.float32)), 0.0, 255.0), tf.uint8)
    with writer.as_default():
        tf.summary.image(name, images, step=step, max_outputs=max_outputs)


def log_weight_histograms(writer, model: keras.Model, step: int) -> None:
    """Logs a histogram of every weight of every layer, trainable or not, tagged
    `weights/<layer>/<weight>` (e.g. `weights/conv1/kernel`); bfloat16 or float16 weights
    are widened to float32 first."""
    with writer.as_default():
        for weight in model.weights:
            values = tf.cast(tf.convert_to_tensor(weight), tf.float32)
            tf.summary.histogram(f"weights/{weight.path}", values, step=step)


def figure_pixels(figure) -> np.ndarray:
    """A matplotlib figure rendered as uint8 [1, H, W, 4] (PNG through memory)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return tf.io.decode_png(buffer.getvalue(), channels=4)[None].numpy()


def log_confusion(writer, confusion, class_names: Sequence[str], step: int,
                  name: str = "confusion") -> None:
    """Logs a confusion matrix ([true, predicted] counts) as the picture `evaluate` draws.

    Args:
        writer: a `tf.summary` writer.
        confusion: [classes, classes] counts.
        class_names: the classes, in index order.
        step: the step to log at.
        name: the summary's tag.

    Raises:
        ValueError: a matrix that is not square or does not match the class names.
    """
    from alexnet_tf.evaluation import confusion_figure

    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape != (len(class_names), len(class_names)):
        raise ValueError(f"`confusion` must be [classes, classes] for {len(class_names)} class "
                         f"names. Received: confusion.shape={confusion.shape}")
    figure = confusion_figure(confusion, class_names)  # selects matplotlib's Agg backend
    import matplotlib.pyplot as plt

    try:
        pixels = figure_pixels(figure)
    finally:
        plt.close(figure)
    with writer.as_default():
        tf.summary.image(name, pixels, step=step)
